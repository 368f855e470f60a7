"""Prometheus metrics of one worker, merged across gunicorn workers at scrape time.

prometheus_client picks its storage when it is first imported: with `PROMETHEUS_MULTIPROC_DIR`
set (gunicorn.conf.py sets it in the master, before any worker exists) each worker writes its
values into mmapped files of that directory, and a scrape of any worker merges the files of all
of them, dead ones included; without it (tests, a single process) values live in this process.
So prometheus_client is imported when a `PrometheusMetrics` is built, never at import time.

  serving_requests_total{model,version,variant,status}      counter, every request
  serving_request_duration_seconds{model,version,variant}   histogram, requests that named a model
  serving_predictions_total{model,version,class}            counter, predicted rows per class
  serving_model_swaps_total{model,result}                   counter, version loads (success|failure)
  serving_store_unavailable_total{operation}                counter, object store unreachable
  serving_in_flight_requests                                gauge (livesum), scrapes not included
  serving_model_version{model,alias,pid}                    gauge (liveall), per worker
  serving_feature_drift_psi{model,version,feature}          gauge (mostrecent), set by `set_drift`
  serving_prediction_cache_lookups_total{model,result}      counter, result = hit | miss
  serving_telemetry_dropped_total{component,reason}         counter, telemetry lost (see below)
  serving_process_cpu_seconds_total{pid}                    counter, per worker
  serving_process_resident_memory_bytes{pid}                gauge (liveall), per worker

prometheus_client's ProcessCollector cannot work in multiprocess mode (it reports the process
that answers the scrape), so each worker samples its own CPU time and resident memory into
`liveall` gauges, every `sample_interval` seconds and when it answers a scrape; a scrape shows
them as counters and gauges labelled by pid, and a dead worker's series go (gunicorn's
`child_exit` hook). CPU time is cumulative, so it is stored in a gauge and exposed as a counter.

`serving_telemetry_dropped_total` counts what the data store never received: prediction log
records (component `predlog`), drift rows (`monitor`) and requests of the traffic counts
(`traffic`), by reason: for the log every loss path (`serving.telemetry.losses`: queue_full,
disk_full, db_unavailable, db_error, exit), for the counts `buffer_full` (the database down).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from serving.errors import ConfigError
from serving.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Predictions take 0.2-20 ms; the top buckets catch big batches and stalls.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SAMPLE_INTERVAL = 5.0
_CPU = "serving_process_cpu_seconds"
_REQUEST_LABELS = ("model", "version", "variant", "status")


_PID = "pid"  # the worker's label of a liveall gauge (the multiprocess collector adds its own)


@dataclass(frozen=True)
class Family:
    """One metric family: prometheus_client's name (a counter gains `_total`), kind, help."""

    name: str
    kind: str  # "counter" | "histogram" | "gauge"
    help: str
    labels: tuple[str, ...] = ()
    mode: str | None = None  # a gauge's multiprocess_mode: how workers' values combine


FAMILIES = (
    Family("serving_requests", "counter", "HTTP requests answered.", _REQUEST_LABELS),
    Family(
        "serving_request_duration_seconds",
        "histogram",
        "Time from the request to its response, for requests that named a model.",
        _REQUEST_LABELS[:3],
    ),
    Family(
        "serving_predictions",
        "counter",
        "Rows predicted per class (classifiers).",
        ("model", "version", "class"),
    ),
    Family(
        "serving_model_swaps",
        "counter",
        "Attempts to load a model version, by result (success or failure).",
        ("model", "result"),
    ),
    Family(
        "serving_store_unavailable",
        "counter",
        "Times the shared model store could not be reached, by operation (poll, list, load).",
        ("operation",),
    ),
    Family(
        "serving_in_flight_requests",
        "gauge",
        "Requests being handled now, summed over the workers (scrapes not included).",
        mode="livesum",
    ),
    Family(
        "serving_model_version",
        "gauge",
        "The version each worker serves for an alias.",
        ("model", "alias", _PID),
        "liveall",
    ),
    Family(
        "serving_feature_drift_psi",
        "gauge",
        "Population stability index of a feature's live inputs against the reference.",
        ("model", "version", "feature"),
        "mostrecent",
    ),
    Family(
        "serving_prediction_cache_lookups",
        "counter",
        "Prediction cache lookups by result (hit or miss); only with SERVING_PREDICTION_CACHE.",
        ("model", "result"),
    ),
    Family(
        "serving_telemetry_dropped",
        "counter",
        "Telemetry never written to the data store: prediction log records, drift rows or "
        "traffic requests, by component and reason (queue_full, disk_full, db_unavailable, "
        "db_error, exit; buffer_full for drift and traffic).",
        ("component", "reason"),
    ),
    Family(
        _CPU,
        "gauge",
        "CPU time (user + system) of each worker process, in seconds.",
        (_PID,),
        "liveall",
    ),
    Family(
        "serving_process_resident_memory_bytes",
        "gauge",
        "Resident memory of each worker process, in bytes.",
        (_PID,),
        "liveall",
    ),
)


class PrometheusMetrics(Metrics):
    """The metrics of this worker; `render()` answers a scrape for every worker."""

    def __init__(self, sample_interval: float = SAMPLE_INTERVAL) -> None:
        import prometheus_client as prom
        from prometheus_client import values

        self._generate = prom.generate_latest
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        own = prom.CollectorRegistry(auto_describe=True)
        # Multiprocess mode: the files are the registry; the collector reads all of them.
        source = _multiprocess_collector() if self.multiprocess else own
        self._exposition = _Exposition(source)
        registry = None if self.multiprocess else own
        made = {f.name: _declare(prom, f, registry, self.multiprocess) for f in FAMILIES}
        self._requests = made["serving_requests"]
        self._duration = made["serving_request_duration_seconds"]
        self._predictions = made["serving_predictions"]
        self._swaps = made["serving_model_swaps"]
        self._store_unavailable = made["serving_store_unavailable"]
        self._in_flight = made["serving_in_flight_requests"]
        self._version = made["serving_model_version"]
        self._drift = made["serving_feature_drift_psi"]
        self._cache = made["serving_prediction_cache_lookups"]
        self._dropped = made["serving_telemetry_dropped"]
        self._cpu = made[_CPU]
        self._rss = made["serving_process_resident_memory_bytes"]
        self._by_request: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._by_class: dict[tuple[Any, ...], Any] = {}
        self._by_cache: dict[tuple[str, bool], Any] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._interval = sample_interval
        self._thread: threading.Thread | None = None
        self._thread_pid = -1
        self._stop = threading.Event()

    # -- the hot path: cached children, no label lookups after the first request of a kind --

    def request(
        self,
        status: int,
        duration_ms: float,
        model: str | None = None,
        version: int | None = None,
        class_counts: Iterable[tuple[object, int]] = (),
        variant: str | None = None,
    ) -> None:
        try:
            key = (model, version, variant, status)
            children = self._by_request.get(key)
            if children is None:
                children = self._by_request[key] = self._request_children(key)
            children[0].inc()
            if children[1] is not None:
                children[1].observe(duration_ms / 1000.0)
            for label, count in class_counts:
                class_key = (model, version, label)
                child = self._by_class.get(class_key)
                if child is None:
                    child = self._predictions.labels(*map(_text, class_key))
                    self._by_class[class_key] = child
                child.inc(count)
        except (OSError, ValueError):  # a full /dev/shm must not fail the request
            log.warning("prometheus: cannot record a request", exc_info=True)

    def cache(self, model: str, hit: bool) -> None:
        try:
            child = self._by_cache.get((model, hit))
            if child is None:
                child = self._cache.labels(model, "hit" if hit else "miss")
                self._by_cache[(model, hit)] = child
            child.inc()
        except (OSError, ValueError):
            log.warning("prometheus: cannot record a cache lookup", exc_info=True)

    def telemetry_dropped(self, component: str, count: int, reason: str = "buffer_full") -> None:
        try:
            self._dropped.labels(component, reason).inc(count)
        except (OSError, ValueError):
            log.warning("prometheus: cannot record dropped telemetry", exc_info=True)

    def _request_children(self, key: tuple[Any, ...]) -> tuple[Any, Any]:
        labels = [_text(part) for part in key]
        histogram = self._duration.labels(*labels[:3]) if key[0] is not None else None
        return self._requests.labels(*labels), histogram

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_finished(self) -> None:
        self._in_flight.dec()

    # -- everything else -----------------------------------------------------------------------

    def swap(self, model: str, ok: bool) -> None:
        self._swaps.labels(model, "success" if ok else "failure").inc()

    def store_unavailable(self, operation: str) -> None:
        self._store_unavailable.labels(operation).inc()

    def serving_version(self, model: str, alias: str, version: int) -> None:
        self._versions[(model, alias)] = version
        self._live(self._version, model, alias).set(version)

    def set_drift(self, model: str, version: int, feature: str, psi: float) -> None:
        """The PSI of one feature of a version, as last computed (by any worker)."""
        self._drift.labels(model, _text(version), feature).set(psi)

    def sample(self) -> None:
        """Write this worker's CPU time and memory; re-write the versions it serves (a worker
        forked from a preloaded master starts with empty files)."""
        self._live(self._cpu).set(time.process_time())
        rss = _resident_bytes()
        if rss is not None:
            self._live(self._rss).set(rss)
        for (model, alias), version in list(self._versions.items()):
            self._live(self._version, model, alias).set(version)

    def render(self) -> bytes:
        """The text exposition of every worker (this one sampled just now)."""
        self.sample()
        return bytes(self._generate(self._exposition))  # type: ignore[arg-type]

    def _live(self, gauge: Any, *labels: str) -> Any:
        if not self.multiprocess:
            labels = (*labels, str(os.getpid()))
        return gauge.labels(*labels) if labels else gauge

    # -- the sampling thread, started in each worker ---------------------------------------------

    def ensure_sampling(self) -> None:
        """Sample now and every interval from a thread of this process (fork-safe)."""
        alive = self._thread is not None and self._thread.is_alive()
        if self._thread_pid == os.getpid() and alive:
            return
        self._thread_pid = os.getpid()
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(
            target=self._sample_forever, name="prometheus-sampler", daemon=True
        )
        self._thread.start()

    def _sample_forever(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception:  # the sampler must outlive any one bad sample
                log.exception("prometheus sample failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class _Exposition:
    """What a scrape shows: the CPU gauge as a counter, without `_created` series (multiprocess
    mode has none, so neither mode shows them)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        for family in self._source.collect():
            kind = "counter" if family.name == _CPU else family.type
            out = Metric(family.name, family.documentation, kind, family.unit)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                name = f"{_CPU}_total" if family.name == _CPU else sample.name
                out.add_sample(name, sample.labels, sample.value, sample.timestamp)
            yield out


def _declare(prom: Any, family: Family, registry: Any, multiprocess: bool) -> Any:
    """The prometheus_client metric of `family`, registered in `registry` (None: the files)."""
    # In multiprocess mode the collector labels liveall gauges by pid; otherwise we do, so the
    # output has the same labels in both modes.
    labels = tuple(x for x in family.labels if not (multiprocess and x == _PID))
    if family.kind == "counter":
        return prom.Counter(family.name, family.help, labels, registry=registry)
    if family.kind == "histogram":
        return prom.Histogram(family.name, family.help, labels, buckets=BUCKETS, registry=registry)
    return prom.Gauge(
        family.name, family.help, labels, registry=registry, multiprocess_mode=family.mode or "all"
    )


def _multiprocess_collector() -> Any:
    from prometheus_client.multiprocess import MultiProcessCollector

    try:
        return MultiProcessCollector(None)
    except ValueError:
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR={os.environ.get('PROMETHEUS_MULTIPROC_DIR')!r} "
            "must be an existing directory"
        ) from None


def _resident_bytes() -> int | None:
    """Resident set size of this process from /proc/self/statm (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _text(value: object) -> str:
    return "" if value is None else str(value)
