"""The parts of a deployment a worker builds beside its aliases, and a damaged one refused.

Routes (split aliases) and shadows are loaded through the loader's `try_load`, which answers
a LoadedModel or the reason a version cannot serve. A deployment.json that cannot be read is
refused like a damaged artifact: logged and counted as a failed swap, once per change of the
file; the worker then serves the last good deployment (in memory, else replayed from history).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from serving.errors import StoreError
from serving.rollouts.routing import Route
from serving.runtime.model import LoadedModel
from serving.store.base import StoreBase, parse_deployment
from serving.store.deployment import variant_name
from serving.store.history import replay_deployment
from serving.telemetry.metrics import Metrics

log = logging.getLogger("serving.runtime.loader")
TryLoad = Callable[[str, int], "LoadedModel | str"]


def routes(
    name: str,
    deployment: dict[str, Any],
    serving: dict[str, LoadedModel],
    available: dict[int, LoadedModel],
    problems: dict[str, str],
    try_load: TryLoad,
) -> dict[str, Route]:
    """Each split alias, over the variants that loaded (a failed one gets no traffic)."""
    out: dict[str, Route] = {}
    for alias, doc in (deployment.get("routes") or {}).items():
        if alias not in serving:
            continue
        usable = set()
        for variant in doc.get("variants", []):
            version = int(variant["version"])
            loaded = available.get(version) or try_load(name, version)
            if isinstance(loaded, LoadedModel):
                available[version] = loaded
                usable.add(version)
            else:
                problems[f"{alias}/{variant_name(version)}"] = f"variant failed: {loaded}"
        route = Route.from_doc(doc, usable)
        if route is not None and len(route.versions) > 1:
            out[alias] = route
    return out


def shadows(
    name: str,
    deployment: dict[str, Any],
    available: dict[int, LoadedModel],
    problems: dict[str, str],
    try_load: TryLoad,
) -> dict[str, LoadedModel]:
    out: dict[str, LoadedModel] = {}
    for alias, version in (deployment.get("shadows") or {}).items():
        loaded = available.get(int(version)) or try_load(name, int(version))
        if isinstance(loaded, LoadedModel):
            available[loaded.version] = loaded
            out[alias] = loaded
        else:
            problems[f"{alias}/shadow"] = f"shadow version {version} failed: {loaded}"
    return out


def refuse(metrics: Metrics, name: str, exc: Exception) -> str:
    """Log and count a damaged deployment.json; the reason workers and readiness report."""
    reason = f"deployment refused: {exc}"
    metrics.swap(name, ok=False)
    log.error("model %s: %s", name, reason, extra={"model": name, "event": "deployment_refused"})
    return reason


def from_history(store: StoreBase, name: str) -> dict[str, Any] | None:
    """The last good deployment per history.jsonl (None: none recorded, or unreadable).

    StoreUnavailable propagates: the caller polls again rather than give up.
    """
    replayed = replay_deployment(store.history(name))
    if replayed is None:
        return None
    try:
        return parse_deployment(name, replayed)
    except StoreError:
        return None
