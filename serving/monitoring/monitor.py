"""Live drift counts: accumulated per worker off the request path, summed in the shared store.

The request path (`Monitor.record`, from the after-request hook) only appends a reference to the
request's validated model input, predictions and probabilities to a bounded per-worker queue
(about a microsecond). A daemon thread per worker, started by the first observation (so a
forked gunicorn worker starts its own), wakes every `SERVING_MONITOR_FLUSH` seconds, bins the
queued requests against each version's reference bins (one vectorised `np.searchsorted` per
feature per request) and adds the counts to the `monitor_counts` table of the embedded store
in one UPSERT transaction: one row per (model, version, minute, feature, bin). A query over a
window sums the minutes (to the minute) of every worker, past and present.

The same flusher writes the worker's traffic counts (`serving.monitoring.traffic`: requests per
10 s, status and latency bin, for the dashboard) into `traffic_counts`, in the same transaction.

A flush that fails (the store locked, full, or a PostgreSQL server down) keeps its counts for
the next one, up to `MAX_KEPT_KEYS` rows per table; beyond that they are dropped, counted
(`on_drop`: the `serving_telemetry_dropped_total` metric, in rows or requests) and logged at
most every `WARN_INTERVAL` seconds. Rows are written in key order, so two workers adding to the
same PostgreSQL rows lock them in the same order and never deadlock.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import Any

from serving.errors import StoreUnavailable
from serving.monitoring import binning, traffic
from serving.monitoring.binning import Profile
from serving.monitoring.counts import COMPONENT, MIGRATIONS, UPSERT, Key, bucket_of
from serving.monitoring.drift import ROWS
from serving.settings import Settings
from serving.store.base import StoreBase
from serving.store.open import store_from_settings
from serving.telemetry.datastore import DataStore
from serving.telemetry.threads import Daemon, start_daemon

log = logging.getLogger(__name__)

MAX_PENDING_ROWS = 200_000  # rows queued per worker between flushes; beyond: dropped, counted
PRUNE_INTERVAL = 3600.0
MAX_KEPT_KEYS = 100_000  # count rows kept per table while the store cannot be written
WARN_INTERVAL = 30.0  # seconds between two warnings about a store that cannot be written
OnDrop = Callable[[str, int], None]  # (component, how many lost): the drop metric
ModelOf = Callable[[str, int], Any]  # (model, version) -> the fitted model held, or None
_YIELD_AFTER = 0.0002  # seconds of binning between two releases of the GIL
_BIN_INTERVAL = 0.25  # seconds between two binnings of the queue (memory: inputs held until then)


def make_monitor(
    settings: Settings,
    on_drop: OnDrop | None = None,
    store: StoreBase | None = None,
    model_of: ModelOf | None = None,
) -> Monitor | None:
    """This worker's monitor (None when SERVING_MONITOR_FLUSH is 0); the app holds it.

    `store`: the worker's own (its metadata already read, no request to an object store).
    `model_of(name, version)`: the fitted model this worker holds (text vocabularies), or None."""
    if settings.monitor_flush <= 0:
        return None
    return Monitor(
        DataStore(settings.data_dir, settings.database_url),
        store or store_from_settings(settings),
        settings.monitor_flush,
        settings.log_retention_days,
        on_drop=on_drop,
        model_of=model_of,
    )


class Monitor:
    """One app's live counts: a queue per worker, a flusher thread, the shared store."""

    def __init__(
        self,
        datastore: DataStore,
        store: StoreBase,
        flush_interval: float = 5.0,
        retention_days: float = 7.0,
        clock: Callable[[], float] = time.time,
        on_drop: OnDrop | None = None,
        model_of: ModelOf | None = None,
    ) -> None:
        self.datastore = datastore
        self._model_of = model_of
        self._on_drop = on_drop
        self.store = store
        self.flush_interval = flush_interval
        self._retention_s = retention_days * 86400.0
        self._clock = clock
        self._queue: deque[tuple[Any, ...]] = deque()
        self._pending_rows = 0
        self._counts: dict[Key, float] = defaultdict(float)
        self.traffic = traffic.TrafficQueue(clock)
        self._traffic_counts: Counter[traffic.Key] = Counter()
        self._profiles: dict[tuple[str, int], Profile | None] = {}
        self._pid = -1
        self._thread: Daemon | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._closed = False
        self.dropped = 0  # rows not counted: queue full, or kept too long unwritten
        self.dropped_requests = 0  # traffic counts dropped, kept too long unwritten
        self.failed = 0  # flushes that failed (their counts are retried)
        self._reported = (0, 0)  # (dropped, traffic dropped) handed to `on_drop`
        self._warned_at = -WARN_INTERVAL

    # -- the request path ------------------------------------------------------------------

    def record(
        self, model: str, version: int, features: Any, predictions: Any, probabilities: Any
    ) -> None:
        if self._pid != os.getpid() and not self._start():
            return
        rows = len(predictions) if predictions is not None else 0
        if self._pending_rows + rows > MAX_PENDING_ROWS:
            self.dropped += rows
            return
        self._pending_rows += rows
        self._queue.append((model, version, self._clock(), features, predictions, probabilities))

    def count(
        self, model: str | None, version: int | None, variant: str | None, status: int, ms: float
    ) -> None:
        if self._pid != os.getpid() and not self._start():
            return
        self.traffic.count(model, version, variant, status, ms)

    # -- the flusher -----------------------------------------------------------------------

    def _start(self) -> bool:
        with self._start_lock:
            if self._closed:
                return False
            if self._pid == os.getpid():
                return True
            # A forked child inherits its parent's queue and counts: they are the parent's.
            self._queue, self._pending_rows = deque(), 0
            self._counts = defaultdict(float)
            self.traffic.reset()
            self._traffic_counts = Counter()
            self._flush_lock = threading.Lock()
            self._stop = threading.Event()
            # An OS thread even under gevent: its database writes must not stall requests.
            self._thread = start_daemon(self._run, "drift-monitor")
            self._pid = os.getpid()
            atexit.register(self._exit_flush, self._pid)  # a worker stopping cleanly
            return True

    def _exit_flush(self, pid: int) -> None:
        if pid == os.getpid() and not self._closed:
            with contextlib.suppress(Exception):
                self.flush()

    def _run(self) -> None:
        """Bin the queue every `_BIN_INTERVAL` s (so it holds well under a second of requests'
        inputs, not a flush interval's worth) and write the counts every `flush_interval` s."""
        next_prune = self._clock()
        next_flush = time.monotonic() + self.flush_interval
        while not self._stop.wait(min(_BIN_INTERVAL, self.flush_interval)):
            if time.monotonic() < next_flush:
                with self._flush_lock:
                    self.accumulate()
                continue
            next_flush = time.monotonic() + self.flush_interval
            self.flush()
            self.report_drops()
            if self._clock() >= next_prune:
                self.prune()
                next_prune = self._clock() + PRUNE_INTERVAL

    def accumulate(self) -> int:
        """Bin every queued request into the in-memory counts; the number of requests.

        Requests of the same version, minute and shape are binned together, up to
        `binning.MERGE_ROWS` rows at a time: one vectorised pass per feature instead of one per
        request (binning one request alone costs ~300 µs of Python for 20 features; merged,
        a few µs). Sleeps briefly every `_YIELD_AFTER` s of work: a request thread waiting for
        the GIL would otherwise wait for the 5 ms switch interval at each of its system calls.
        """
        groups: dict[tuple[Any, ...], list[tuple[Any, Any, Any]]] = {}
        done = 0
        while self._queue:
            model, version, at, features, predictions, probabilities = self._queue.popleft()
            self._pending_rows -= len(predictions) if predictions is not None else 0
            bucket = bucket_of(at)
            shape = (type(features), getattr(features, "shape", (0, 0))[1:], probabilities is None)
            groups.setdefault((model, version, bucket, shape), []).append(
                (features, predictions, probabilities)
            )
            done += 1
        since = time.perf_counter()
        for (model, version, bucket, _), items in groups.items():
            for batch in binning.batches(items):
                if time.perf_counter() - since > _YIELD_AFTER:
                    time.sleep(0)
                    since = time.perf_counter()
                self._add_merged(model, version, bucket, batch)
        return done

    def _add_merged(
        self, model: str, version: int, bucket: float, batch: list[tuple[Any, Any, Any]]
    ) -> None:
        try:
            merged = binning.merge(batch)
        except Exception:  # shapes that do not stack: one request at a time
            for features, predictions, probabilities in batch:
                self._add_logged(model, version, bucket, features, predictions, probabilities)
            return
        self._add_logged(model, version, bucket, *merged)

    def _add_logged(
        self,
        model: str,
        version: int,
        at: float,
        features: Any,
        predictions: Any,
        probabilities: Any,
    ) -> None:
        try:
            self._add(model, version, at, features, predictions, probabilities)
        except Exception:  # an odd input must not kill the monitor: count it and go on
            log.exception("drift monitor: cannot bin a prediction of %s v%s", model, version)

    def flush(self) -> int:
        """Bin the queues and add the counts to the store in one transaction; rows written."""
        with self._flush_lock:
            self.accumulate()
            self._traffic_counts.update(self.traffic.drain())
            if not self._counts and not self._traffic_counts:
                return 0
            counts, self._counts = self._counts, defaultdict(float)
            requests, self._traffic_counts = self._traffic_counts, Counter()
            rows = sorted(((*key, n) for key, n in counts.items()), key=_order)
            traffic_rows = sorted(((*key, n) for key, n in requests.items()), key=_order)
            try:
                self.datastore.ensure_schema(COMPONENT, MIGRATIONS)
                with self.datastore.transaction() as conn:
                    conn.executemany(UPSERT, rows)
                    conn.executemany(traffic.UPSERT, traffic_rows)
            except Exception as exc:  # a locked or full store: keep the counts for the next flush
                self._keep(counts, requests, exc)
                return 0
            if self.failed:
                log.warning("drift monitor: writing counts to %s again", self.datastore.where)
            self.failed = 0
            return len(rows) + len(traffic_rows)

    def _keep(self, counts: dict[Key, float], requests: Counter[Any], exc: Exception) -> None:
        """Put unwritten counts back for the next flush, within `MAX_KEPT_KEYS` per table."""
        if time.monotonic() - self._warned_at >= WARN_INTERVAL:
            self._warned_at = time.monotonic()
            log.warning("drift monitor: cannot write counts to %s (%s)", self.datastore.where, exc)
        self.failed += 1
        for key, n in counts.items():
            if key in self._counts or len(self._counts) < MAX_KEPT_KEYS:
                self._counts[key] += n
            elif key[3] == ROWS:
                self.dropped += int(n)
        for tkey, tn in requests.items():
            if tkey in self._traffic_counts or len(self._traffic_counts) < MAX_KEPT_KEYS:
                self._traffic_counts[tkey] += tn
            else:
                self.dropped_requests += tn

    def report_drops(self) -> None:
        """Hand the rows and requests lost since the last call to `on_drop`."""
        now = (self.dropped, self.dropped_requests + self.traffic.dropped)
        rows, requests = now[0] - self._reported[0], now[1] - self._reported[1]
        self._reported = now
        if self._on_drop is not None:
            if rows > 0:
                self._on_drop("monitor", rows)
            if requests > 0:
                self._on_drop("traffic", requests)

    def prune(self) -> None:
        try:
            if not self.datastore.exists():
                return
            self.datastore.ensure_schema(COMPONENT, MIGRATIONS)
            cutoff = self._clock() - self._retention_s
            with self.datastore.transaction() as conn:
                conn.execute("DELETE FROM monitor_counts WHERE bucket < ?", (cutoff,))
                conn.execute("DELETE FROM traffic_counts WHERE bucket < ?", (cutoff,))
        except Exception:
            log.exception("drift monitor: pruning failed")

    def close(self) -> None:
        """Stop the flusher after a last flush (tests, a clean worker exit)."""
        with self._start_lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid():
            self._stop.set()
            thread.join(timeout=10)
            self.flush()
        self.datastore.close()

    # -- binning ---------------------------------------------------------------------------

    def _profile(self, model: str, version: int) -> Profile | None:
        key = (model, version)
        if key not in self._profiles:
            try:
                held = self._model_of(model, version) if self._model_of else None
                self._profiles[key] = Profile(self.store.read_metadata(model, version), held)
            except StoreUnavailable:
                return None  # the object store is down: try again with a later request
            except Exception:
                log.warning("drift monitor: no metadata for %s v%s", model, version)
                self._profiles[key] = None
        return self._profiles[key]

    def _add(
        self,
        model: str,
        version: int,
        at: float,
        features: Any,
        predictions: Any,
        probabilities: Any,
    ) -> None:
        profile = self._profile(model, version)
        if profile is None or predictions is None:
            return
        binning.add_request(
            self._counts, profile, model, version, at, features, predictions, probabilities
        )


def _order(row: tuple[Any, ...]) -> tuple[str, ...]:
    """The same order of keys in every worker, whatever the types of their parts."""
    return tuple(str(part) for part in row[:-1])
