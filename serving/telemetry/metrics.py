"""StatsD metrics, fire and forget: a send never raises into a request or blocks on a peer.
A request's lines are batched per process and sent in full datagrams (statsd_batch).

Names (DESIGN §5), under the configured prefix:
  request.<model>.<version>          timer, ms, per prediction request
  requests.<status>                  counter, every request
  predictions.<model>.<class>        counter, rows predicted per class (classifiers)
  model.<model>.swap.success|failure counter, per version load attempt
  store.unavailable.<operation>      counter, the shared model store could not be reached
  model.<model>.<alias>.version      gauge, the version this worker serves for an alias
  cache.<model>.hit|miss             counter, prediction cache lookups (SERVING_PREDICTION_CACHE)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import statsd

from serving.telemetry.statsd_batch import StatsdBatch, open_batch

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAMES = 10_000


def metric_part(value: object) -> str:
    """One dot-free, colon-free segment of a metric name."""
    return _UNSAFE.sub("_", str(value)) or "_"


class Metrics:
    """The null implementation: used when no StatsD host is configured."""

    def request(
        self,
        status: int,
        duration_ms: float,
        model: str | None = None,
        version: int | None = None,
        class_counts: Iterable[tuple[object, int]] = (),
        variant: str | None = None,
    ) -> None:
        """Record one finished request."""

    def swap(self, model: str, ok: bool) -> None:
        """Record one attempt to load a version."""

    def store_unavailable(self, operation: str) -> None:
        """Record one failed attempt to reach the model store (poll, list or load)."""

    def serving_version(self, model: str, alias: str, version: int) -> None:
        """Record which version serves an alias in this worker."""

    def set_drift(self, model: str, version: int, feature: str, psi: float) -> None:
        """Record the drift (PSI) of one feature of a version against its reference."""

    def cache(self, model: str, hit: bool) -> None:
        """Record one prediction cache lookup."""

    def telemetry_dropped(self, component: str, count: int, reason: str = "buffer_full") -> None:
        """Record telemetry lost: predlog, monitor, traffic; why (`serving.telemetry.losses`)."""

    def close(self) -> None:
        """Release the socket, if any."""


class StatsdMetrics(Metrics):
    """Per-request lines go to a per-process batch (serving.telemetry.statsd_batch: full
    datagrams, by size and every 0.2 s); the rare others are sent at once with the `statsd`
    client. Both are made lazily in each worker process."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self._host, self._port, self._prefix = host, port, prefix
        self._client: statsd.StatsClient | None = None
        self._batch: StatsdBatch | None = None
        self._names: dict[tuple[object, ...], str] = {}  # metric names already made safe
        self._pid = -1

    def _get(self) -> statsd.StatsClient | None:
        if self._pid != os.getpid():  # a forked child must not share its parent's socket
            self._open()
        return self._client

    def _open(self) -> None:
        self.close()
        self._pid = os.getpid()
        try:
            self._client = statsd.StatsClient(self._host, self._port, prefix=self._prefix)
        except OSError:  # unresolvable host: metrics off rather than requests failing
            self._client = None
        self._batch = open_batch(self._host, self._port, self._prefix) if self._client else None

    def request(
        self,
        status: int,
        duration_ms: float,
        model: str | None = None,
        version: int | None = None,
        class_counts: Iterable[tuple[object, int]] = (),
        variant: str | None = None,
    ) -> None:
        if self._pid != os.getpid():
            self._open()
        batch = self._batch
        if batch is None:
            return
        counters = {self._name("requests", status): 1}
        timer = None
        if model is not None:
            timer = f"{self._name('request', model, version)}:{duration_ms:0.6f}|ms"
            for label, count in class_counts:
                counters[self._name("predictions", model, label)] = count
        batch.add(counters, timer)

    def _name(self, kind: str, *parts: object) -> str:
        """`kind.part.part`, each part made safe once and remembered (a bounded memo)."""
        key = (kind, *parts)
        try:
            name = self._names.get(key)
        except TypeError:  # an unhashable label: made safe every time
            return ".".join([kind, *(metric_part(p) for p in parts)])
        if name is None:
            if len(self._names) > _MAX_NAMES:
                self._names.clear()
            name = self._names[key] = ".".join([kind, *(metric_part(p) for p in parts)])
        return name

    def swap(self, model: str, ok: bool) -> None:
        client = self._get()
        if client is not None:
            client.incr(f"model.{metric_part(model)}.swap.{'success' if ok else 'failure'}")

    def store_unavailable(self, operation: str) -> None:
        client = self._get()
        if client is not None:
            client.incr(f"store.unavailable.{metric_part(operation)}")

    def serving_version(self, model: str, alias: str, version: int) -> None:
        client = self._get()
        if client is not None:
            client.gauge(f"model.{metric_part(model)}.{metric_part(alias)}.version", version)

    def set_drift(self, model: str, version: int, feature: str, psi: float) -> None:
        client = self._get()
        if client is not None:
            name = ".".join(metric_part(p) for p in (model, version, feature))
            client.gauge(f"drift.{name}", psi)

    def cache(self, model: str, hit: bool) -> None:
        client = self._get()
        if client is not None:
            client.incr(f"cache.{metric_part(model)}.{'hit' if hit else 'miss'}")

    def telemetry_dropped(self, component: str, count: int, reason: str = "buffer_full") -> None:
        client = self._get()
        if client is not None:
            client.incr(f"telemetry.dropped.{metric_part(component)}.{metric_part(reason)}", count)

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._client is not None:
            self._client.close()
            self._client = None


class MetricsGroup(Metrics):
    """Several backends behind the one interface (StatsD and Prometheus), called in order."""

    def __init__(self, *members: Metrics) -> None:
        self._members = members

    def request(
        self,
        status: int,
        duration_ms: float,
        model: str | None = None,
        version: int | None = None,
        class_counts: Iterable[tuple[object, int]] = (),
        variant: str | None = None,
    ) -> None:
        counts = class_counts if isinstance(class_counts, list | tuple) else list(class_counts)
        for member in self._members:
            member.request(status, duration_ms, model, version, counts, variant)

    def swap(self, model: str, ok: bool) -> None:
        for member in self._members:
            member.swap(model, ok)

    def store_unavailable(self, operation: str) -> None:
        for member in self._members:
            member.store_unavailable(operation)

    def serving_version(self, model: str, alias: str, version: int) -> None:
        for member in self._members:
            member.serving_version(model, alias, version)

    def set_drift(self, model: str, version: int, feature: str, psi: float) -> None:
        for member in self._members:
            member.set_drift(model, version, feature, psi)

    def cache(self, model: str, hit: bool) -> None:
        for member in self._members:
            member.cache(model, hit)

    def telemetry_dropped(self, component: str, count: int, reason: str = "buffer_full") -> None:
        for member in self._members:
            member.telemetry_dropped(component, count, reason)

    def close(self) -> None:
        for member in self._members:
            member.close()


def make_metrics(host: str | None, port: int, prefix: str) -> Metrics:
    return StatsdMetrics(host, port, prefix) if host else Metrics()
