"""The per-worker model loader: follows the store's deployment files and hot-swaps versions.

A poll compares each model's `deployment.json` (inode, mtime, size) with what it last saw. On a
change it loads and verifies every newly wanted version *before* anything is dropped, then
replaces one dict reference, so a request sees either the old state or the new one. A version
that fails to load is remembered with its reason and not retried until its files change; the
alias keeps serving what it served before.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from serving.errors import (
    ModelNotFound,
    ModelUnavailable,
    ServingError,
    StoreError,
    StoreUnavailable,
)
from serving.runtime import artifacts
from serving.runtime import deployment_parts as parts
from serving.runtime.cache import PredictionCache
from serving.runtime.model import Choice, LoadedModel, ModelState, keep_replaced
from serving.runtime.prepare import prepare
from serving.runtime.store_health import StoreHealth
from serving.store.base import DEPLOYMENT, HISTORY, StoreBase
from serving.store.deployment import variant_name
from serving.store.history import earlier_versions
from serving.store.model_store import DEFAULT_ALIAS
from serving.telemetry.metrics import Metrics
from serving.telemetry.threads import Daemon, start_daemon

log = logging.getLogger(__name__)
_RETRY = object()  # the signature of a state to reconcile again at the next poll


class ModelLoader:
    """Owns the models of one worker process. Built by `create_app`, one per app."""

    def __init__(
        self,
        store: StoreBase,
        metrics: Metrics,
        poll_interval: float = 1.0,
        allow_version_mismatch: bool = False,
        pinned_cache_size: int = 2,
        clock: Callable[[], float] = time.monotonic,
        array_input: bool = True,
        kernels: bool = True,
        cache: PredictionCache | None = None,
        allow_pickle: bool = True,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = poll_interval
        self._allow_mismatch = allow_version_mismatch
        self._allow_pickle = allow_pickle
        self._pinned_size = pinned_cache_size
        self._clock = clock
        self._array_input = array_input
        self._kernels = kernels
        self._cache = cache
        self._states: dict[str, ModelState] = {}
        self._failures: dict[tuple[str, int], tuple[tuple[int, ...], str]] = {}
        self._pinned: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # serialises refreshes
        self._pinned_lock = threading.Lock()  # guards the pinned LRU only: never held for a load
        self._last_poll = float("-inf")
        self._names: list[str] | None = None
        self._listed_at = float("-inf")
        self._health = StoreHealth(metrics, poll_interval)
        self._outage: tuple[str, Exception] | None = None  # this poll's first store failure
        self._transient = False
        self._thread: Daemon | None = None
        self._thread_pid = -1
        self._stop = threading.Event()

    # -- the hot path --------------------------------------------------------------------

    def resolve(self, name: str, alias: str = DEFAULT_ALIAS, key: str | None = None) -> LoadedModel:
        """The model serving `alias` (its route applied), or ModelNotFound / ModelUnavailable."""
        return self.choose(name, alias, key).loaded

    def choose(self, name: str, alias: str = DEFAULT_ALIAS, key: str | None = None) -> Choice:
        """Route one request: the variant by weight (sticky by `key`), and the alias's shadow."""
        state = self._states.get(name)
        if state is None:
            raise ModelNotFound(f"model {name!r} is not deployed", {"model": name})
        route = state.routes.get(alias)
        if route is not None:
            version = route.choose(key)
            return Choice(state.loaded[version], variant_name(version), state.shadows.get(alias))
        loaded = state.serving.get(alias)
        if loaded is not None:
            return Choice(loaded, None, state.shadows.get(alias))
        if alias in state.wanted:
            reason = state.problems.get(alias, "not loaded yet")
            raise ModelUnavailable(
                f"model {name!r} alias {alias!r} has no loaded version: {reason}",
                {"model": name, "alias": alias, "wanted": state.wanted[alias]},
            )
        if state.unresolved is not None:  # a damaged deployment.json and no last good one
            raise ModelUnavailable(
                f"model {name!r} alias {alias!r} cannot be resolved: {state.unresolved}",
                {"model": name, "alias": alias},
            )
        raise ModelNotFound(
            f"model {name!r} has no alias {alias!r}", {"model": name, "alias": alias}
        )

    def get_version(self, name: str, version: int) -> LoadedModel:
        """A pinned version: a deployed one from memory, another one through a small LRU."""
        state = self._states.get(name)
        if state is not None and version in state.loaded:
            return state.loaded[version]
        key = (name, version)
        with self._pinned_lock:
            loaded = self._pinned.get(key)
            if loaded is not None:
                self._pinned.move_to_end(key)
                return loaded
        self._store.version_dir(name, version)  # 404 for an unknown model or version
        if self._pinned_size == 0:
            raise ModelUnavailable(
                f"model {name!r} version {version} is not deployed", {"model": name}
            )
        loaded = self._load_or_explain(name, version)
        with self._pinned_lock:
            self._pinned[key] = loaded
            while len(self._pinned) > self._pinned_size:
                self._pinned.popitem(last=False)
        return loaded

    # -- following the store -------------------------------------------------------------

    def maybe_refresh(self) -> bool:
        """Refresh if a poll interval has passed since the last one; True when it ran."""
        now = self._clock()
        if now - self._last_poll < self.next_poll_in():
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        """Bring every model's state in line with its deployment file (serialised).

        An unreachable store changes nothing: every model keeps what it serves, the outage is
        logged and counted, and polls back off until the store answers again.
        """
        with self._lock:
            self._last_poll = self._clock()
            self._outage = None
            try:
                names = self._model_names()
            except StoreUnavailable as exc:
                self._health.down("list", exc)
                return
            states = dict(self._states)
            changed = False
            for name in names:
                old = states.get(name)
                try:
                    signature = self._store.deployment_signature(name)
                except StoreUnavailable as exc:
                    self._store_down("poll", exc)
                    continue
                if old is not None and old.signature == signature:
                    continue
                self._transient = False
                state = self._reconcile(name, signature, old)
                if self._transient:  # a download failed for want of the store: poll again
                    state = dataclasses.replace(state, signature=_RETRY)
                states[name] = state
                changed = True
            for gone in set(states) - set(names):
                del states[gone]
                changed = True
            if self._outage is None:
                self._health.up()
            else:  # counted once per poll, whatever the number of models
                self._health.down(*self._outage)
            if changed:
                self._swap_in(states)

    def _swap_in(self, states: dict[str, ModelState]) -> None:
        old, self._states = self._states, states  # the one swap every request sees atomically
        with self._pinned_lock:  # what it replaced stays at hand for a rollback
            keep_replaced(self._pinned, self._pinned_size, old, states)
            held = set(self._pinned)
        held.update((n, v) for n, s in states.items() for v in s.versions())
        if self._cache is not None:  # answers of versions no longer held go too
            self._cache.retain(held)
        self._store.prune_cache(held)  # an object store's downloads: keep what this worker holds

    def _held(self, name: str, version: int) -> LoadedModel | None:
        """A version the pinned LRU still holds (one a recent swap replaced): no load."""
        with self._pinned_lock:
            loaded = self._pinned.get((name, version))
        if loaded is not None:
            _log_event(logging.INFO, "reused", name, version, "reused (still loaded)")
        return loaded

    def _model_names(self) -> list[str]:
        """The store's models: listed every poll, or every `list_interval` on an object store."""
        now = self._clock()
        if self._names is None or now - self._listed_at >= self._store.list_interval:
            self._names, self._listed_at = self._store.list_models(), now
        return self._names

    def _store_down(self, operation: str, exc: Exception) -> None:
        if self._outage is None:
            self._outage = (operation, exc)

    def next_poll_in(self) -> float:
        return self._health.next_poll_in()

    def _reconcile(
        self, name: str, signature: tuple[int, int, int] | None, old: ModelState | None
    ) -> ModelState:
        try:
            deployment = self._store.read_deployment(name)
        except StoreUnavailable as exc:
            self._store_down("poll", exc)
            return old or ModelState(name, _RETRY, {}, {}, {})
        except (StoreError, ValueError, TypeError) as exc:
            return self._refused(name, signature, old, exc)
        return self._build(name, signature, old, deployment)

    def _refused(
        self, name: str, signature: object, old: ModelState | None, exc: Exception
    ) -> ModelState:
        """A damaged deployment.json: the last good deployment, from memory or history."""
        reason = parts.refuse(self._metrics, name, exc)
        if old is not None and old.wanted:
            problems = {**old.problems, DEPLOYMENT: f"{reason}; serving the last good one"}
            return dataclasses.replace(old, signature=signature, problems=problems)
        try:
            replayed = parts.from_history(self._store, name)
        except StoreUnavailable as down:
            self._store_down("poll", down)
            return ModelState(name, _RETRY, {}, {}, {DEPLOYMENT: reason}, unresolved=reason)
        if replayed is None:
            return ModelState(name, signature, {}, {}, {DEPLOYMENT: reason}, unresolved=reason)
        state = self._build(name, signature, old, replayed)
        state.problems[DEPLOYMENT] = f"{reason}; serving the last good one (from {HISTORY})"
        return state

    def _build(
        self, name: str, signature: object, old: ModelState | None, deployment: dict[str, Any]
    ) -> ModelState:
        wanted: dict[str, int] = deployment["aliases"]
        previous = old.serving if old else {}
        available = dict(old.loaded) if old else {}
        serving: dict[str, LoadedModel] = {}
        problems: dict[str, str] = {}
        for alias, version in wanted.items():
            loaded = available.get(version) or self._held(name, version)  # a rollback
            loaded = loaded or self._try_load(name, version)
            if isinstance(loaded, LoadedModel):
                available[version] = loaded
                serving[alias] = loaded
                self._metrics.serving_version(name, alias, version)
                continue
            problems[alias] = f"version {version} failed to load: {loaded}"
            fallback = previous.get(alias) or self._fallback(name, alias, version, available)
            if fallback is not None:
                available[fallback.version] = fallback
                serving[alias] = fallback
                self._metrics.serving_version(name, alias, fallback.version)  # what it serves
                problems[alias] += f"; still serving version {fallback.version}"
        routes = parts.routes(name, deployment, serving, available, problems, self._try_load)
        shadows = parts.shadows(name, deployment, available, problems, self._try_load)
        keep = {m.version for m in serving.values()} | {m.version for m in shadows.values()}
        for route in routes.values():
            keep.update(route.versions)
        loaded = {v: m for v, m in available.items() if v in keep}
        return ModelState(name, signature, dict(wanted), serving, problems, routes, shadows, loaded)

    def _fallback(
        self, name: str, alias: str, bad: int, available: dict[int, LoadedModel]
    ) -> LoadedModel | None:
        """For a worker with nothing in memory (just started): the newest version the alias
        pointed at before, per history.jsonl, that loads. Old workers keep what they served,
        which is the same version unless history was edited by hand."""
        try:
            history = self._store.history(name)
        except StoreUnavailable:
            return None
        for version in earlier_versions(history, alias, bad):
            loaded = available.get(version) or self._try_load(name, version)
            if isinstance(loaded, LoadedModel):
                return loaded
        return None

    def _try_load(self, name: str, version: int) -> LoadedModel | str:
        """Load a version, or return the (remembered) reason it cannot serve."""
        files = self._store.files_signature(name, version)
        failed = self._failures.get((name, version))
        if failed is not None and failed[0] == files:
            return failed[1]
        try:
            loaded = self._load(name, version)
        except StoreUnavailable as exc:  # not the version's fault: not remembered
            self._transient = True
            self._store_down("load", exc)
            return f"the model store is unreachable ({exc})"
        except (artifacts.ModelLoadError, ServingError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            self._failures[(name, version)] = (files, reason)
            self._metrics.swap(name, ok=False)
            _log_event(logging.ERROR, "load_failed", name, version, "cannot serve: %s", reason)
            return reason
        self._failures.pop((name, version), None)
        self._metrics.swap(name, ok=True)
        _log_event(logging.INFO, "loaded", name, version, "loaded")
        return loaded

    def _load_or_explain(self, name: str, version: int) -> LoadedModel:
        result = self._try_load(name, version)
        if isinstance(result, LoadedModel):
            return result
        raise ModelUnavailable(
            f"model {name!r} version {version} cannot serve: {result}",
            {"model": name, "version": version},
        )

    def _load(self, name: str, version: int) -> LoadedModel:
        folder = self._store.version_dir(name, version)
        metadata = self._store.read_metadata(name, version)
        model = artifacts.load_version(folder, metadata, self._allow_mismatch, self._allow_pickle)
        schema, runner = prepare(
            name, version, model, metadata, array_input=self._array_input, kernels=self._kernels
        )
        return LoadedModel(
            name, version, model, metadata, schema, self._clock(), runner, self._cache
        )

    # -- status ----------------------------------------------------------------------------

    def states(self) -> dict[str, ModelState]:
        return dict(self._states)

    def ready(self) -> tuple[bool, dict[str, str]]:
        """True when every model with a deployment serves a version for each of its aliases
        (a model whose deployment.json is damaged, with no last good one, is not ready)."""
        waiting = {}
        for name, state in self._states.items():
            if state.unresolved is not None:
                waiting[f"{name}:{DEPLOYMENT}"] = state.unresolved
            for alias in state.wanted:
                if alias not in state.serving:
                    waiting[f"{name}:{alias}"] = state.problems.get(alias, "not loaded")
        return not waiting, waiting

    def fallbacks(self) -> dict[str, str]:
        """`{"<model>:<alias>": why}` of aliases served by another version than deployed."""
        return {
            f"{name}:{alias}": state.problems.get(alias, f"version {wanted} is not loaded")
            for name, state in self._states.items()
            for alias, wanted in state.wanted.items()
            if alias in state.serving and state.serving[alias].version != wanted
        }

    # -- the poller thread -----------------------------------------------------------------

    def ensure_polling(self) -> None:
        """Start the poll thread in this process if it is not running (fork-safe)."""
        if self._thread_pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        self._thread_pid = os.getpid()
        self._stop = threading.Event()
        self._thread = start_daemon(self._poll_forever, "model-poller")  # OS thread under gevent

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _poll_forever(self) -> None:
        took = 0.0  # fixed rate: a slow refresh (a load) does not push the next poll back
        while not self._stop.wait(max(0.0, self.next_poll_in() - took)):
            started = time.monotonic()  # real time, as the wait is
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("model poll failed")
            took = time.monotonic() - started


def _log_event(level: int, event: str, name: str, version: int, what: str, *args: object) -> None:
    extra = {"model": name, "version": version, "event": event}
    log.log(level, f"model %s version %s {what}", name, version, *args, extra=extra)
