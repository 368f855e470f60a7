"""The prediction log, in the embedded store, written off the request path.

`SQLiteRecorder.record()` runs on the request path and only samples and appends to a bounded
in-memory queue (full: the record is dropped and counted, the request never waits). A daemon
thread per worker process, started by the first record, drains the queue every
`flush_interval` into one transaction, turning numpy outputs into JSON there, and prunes rows
past the retention period, the row cap or the byte bound now and then (`retention`). The store
is SQLite or PostgreSQL (`DataStore`); when a write fails for a reason that may pass (the
database is down, locked or full) the batch goes back into the queue, so the queue is also the
buffer of an outage: beyond its bound records are dropped, counted by reason (`on_drop`, the
`serving_telemetry_dropped_total` metric: `serving.telemetry.losses`) and logged,
rate-limited. Inputs are kept for the first
`input_rows` instances of a request only, objects as columns and rows (`columnar`), and
outputs for the first `output_rows`, so a 10,000-row batch does not write megabytes.

Sampling is a stable hash of the request id, so a shadow's copy of a request is kept exactly
when its primary is, and every worker samples the same ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from serving.errors import ServingError
from serving.settings import Settings
from serving.telemetry.datastore import DataStore
from serving.telemetry.feedback import Feedback, FeedbackResult, store_feedback
from serving.telemetry.losses import Losses, OnDrop, failure_reason
from serving.telemetry.predlog_schema import COMPONENT, MIGRATIONS
from serving.telemetry.recorder import PredictionRecord, Recorder
from serving.telemetry.retention import prune
from serving.telemetry.threads import Daemon, start_daemon

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000  # records waiting per worker; beyond it they are dropped and counted
FLUSH_INTERVAL = 0.2  # seconds between the writer's transactions
PRUNE_INTERVAL = 60.0  # seconds between retention passes of each worker
_YIELD_AFTER = 0.0002  # seconds of JSON conversion between two releases of the GIL
_COLUMNS = (
    "request_id", "at", "model", "version", "alias", "variant", "shadow", "status",
    "latency_ms", "rows", "inputs", "outputs",
)  # fmt: skip


class PredictionLogOff(ServingError):
    """Feedback and A/B reports need the prediction log, and it is off."""

    status_code = 503
    code = "prediction_log_off"


def make_recorder(settings: Settings, on_drop: OnDrop | None = None) -> Recorder:
    """The prediction log of an app, or the null recorder when SERVING_LOG_SAMPLE is 0."""
    if settings.log_sample <= 0:
        return Recorder()
    return SQLiteRecorder(
        DataStore(settings.data_dir, settings.database_url),
        settings.log_sample,
        settings.log_retention_days,
        settings.log_max_rows,
        settings.log_max_bytes,
        input_rows=settings.log_input_rows,
        output_rows=settings.log_output_rows,
        queue_size=QUEUE_SIZE,
        on_drop=on_drop,
    )


def sampled(request_id: str, rate: float) -> bool:
    """Whether `request_id` falls in the sample: the same answer in every worker."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2.0**64


class SQLiteRecorder(Recorder):
    """The prediction log of one app: a queue per worker, a writer thread, the shared store
    (SQLite or PostgreSQL: the name is older than the second engine)."""

    def __init__(
        self,
        datastore: DataStore,
        sample: float = 1.0,
        retention_days: float = 7.0,
        max_rows: int = 1_000_000,
        max_bytes: int = 1024**3,
        input_rows: int = 10,
        output_rows: int = 1000,
        queue_size: int = QUEUE_SIZE,
        flush_interval: float = FLUSH_INTERVAL,
        prune_interval: float = PRUNE_INTERVAL,
        clock: Callable[[], float] = time.time,
        on_drop: OnDrop | None = None,
    ) -> None:
        self.datastore = datastore
        self._sample = sample
        self._retention_s = retention_days * 86400.0
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._input_rows = input_rows
        self._output_rows = output_rows
        self._queue_size = queue_size
        self.flush_interval = flush_interval
        self._prune_interval = prune_interval
        self._clock = clock
        self._queue: deque[PredictionRecord] = deque()
        self._pid = -1  # the process whose writer thread is running
        self._thread: Daemon | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._failing = False
        self.dropped = 0  # queue full (also while the store is down and the queue fills)
        self.failed = 0  # lost to a write error that will not pass (bad data)
        self.written = 0
        self.losses = Losses(on_drop, clock)  # every record lost, by reason

    # -- the request path ------------------------------------------------------------------

    def record(self, record: PredictionRecord) -> None:
        if self._pid != os.getpid() and not self._start_writer():
            return
        if self._sample < 1.0 and not sampled(record.request_id, self._sample):
            return
        if len(self._queue) >= self._queue_size:
            self.dropped += 1
            self.losses.lost(1)
            return
        inputs, outputs = record.inputs, record.outputs
        if inputs is not None and len(inputs) > self._input_rows:
            # Hold only what will be written: not a 100-row batch's inputs until the flush.
            record = dataclasses.replace(record, inputs=inputs[: self._input_rows] or None)
        if outputs is not None and len(outputs) > self._output_rows:
            record = dataclasses.replace(record, outputs=outputs[: self._output_rows])
        self._queue.append(record)

    # -- the writer ------------------------------------------------------------------------

    def _start_writer(self) -> bool:
        """Start this process's writer thread (a forked child gets its own). False once closed."""
        with self._start_lock:
            if self._closed:
                return False
            if self._pid == os.getpid():
                return True
            # A child inherits a copy of its parent's queue and locks: those are the parent's.
            self._queue = deque()
            self._write_lock = threading.Lock()
            self._stop = threading.Event()
            # An OS thread even under gevent: a commit blocked in SQLite must not stall requests.
            self._thread = start_daemon(self._run, "prediction-log")
            self._pid = os.getpid()
            return True

    def _run(self) -> None:
        next_prune = self._clock()
        while not self._stop.wait(self.flush_interval):
            self.flush()
            self.report_drops()
            if self._clock() >= next_prune:
                self._prune_logged()
                next_prune = self._clock() + self._prune_interval

    def report_drops(self) -> int:
        """Hand the records lost since the last call to `on_drop`; warn (rate-limited)."""
        return self.losses.report(len(self._queue))

    def flush(self) -> int:
        """Write every queued record now, in one transaction; the number written."""
        with self._write_lock:
            if self.datastore.backing_off():  # the database is down: the queue is the buffer
                return 0
            batch = []
            while self._queue:
                batch.append(self._queue.popleft())
            if not batch:
                return 0
            try:
                rows = self._convert(batch)
                self.datastore.ensure_schema(COMPONENT, MIGRATIONS)
                with self.datastore.transaction() as conn:
                    self.datastore.engine.insert(conn, "predictions", _COLUMNS, rows)
            except Exception as exc:  # a full disk or a database down must not kill the writer
                self._failed_write(batch, exc)
                return 0
            if self._failing:
                log.warning("prediction log %s: writing again", self.datastore.where)
            self._failing, self.losses.failure = False, None
            self.written += len(batch)
            return len(batch)

    def _failed_write(self, batch: list[PredictionRecord], exc: Exception) -> None:
        """Put the batch back in front of the queue (up to its bound) when the failure may
        pass; count the rest as dropped. Bad data is counted as failed and not retried."""
        if not self._failing:
            log.warning(
                "prediction log %s: cannot write %d records (%s)",
                self.datastore.where,
                len(batch),
                exc,
                exc_info=not self.datastore.transient(exc),
            )
        self._failing = True
        transient = self.datastore.transient(exc)
        self.losses.failure = failure_reason(exc, transient)
        if not transient:
            self.failed += len(batch)
            self.losses.lost(len(batch))
            return
        room = max(0, self._queue_size - len(self._queue))
        kept = batch[:room]
        self._queue.extendleft(reversed(kept))
        self.dropped += len(batch) - len(kept)
        self.losses.lost(len(batch) - len(kept))

    def _convert(self, batch: list[PredictionRecord]) -> list[tuple[Any, ...]]:
        """Rows to insert. Sleeps briefly every `_YIELD_AFTER` s of work: a request thread
        waiting for the GIL would otherwise wait up to the 5 ms switch interval."""
        rows, since = [], time.perf_counter()
        for record in batch:
            rows.append(_to_row(record))
            if time.perf_counter() - since > _YIELD_AFTER:
                time.sleep(0)
                since = time.perf_counter()
        return rows

    def prune(self) -> int:
        """Delete rows past the retention period, the row cap or the byte bound, give the
        space back; the number deleted (`serving.telemetry.retention`)."""
        self.datastore.ensure_schema(COMPONENT, MIGRATIONS)
        cutoff = self._clock() - self._retention_s
        return prune(self.datastore, cutoff, self._max_rows, self._max_bytes)

    def _prune_logged(self) -> None:
        try:
            self.prune()
        except Exception:
            log.exception("prediction log: pruning failed")

    def close(self) -> None:
        """Stop the writer, write what is queued, close this process's connections."""
        with self._start_lock:
            self._closed = True
            mine = self._pid == os.getpid()
        if mine and self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self.flush()
            if self._queue:  # the store is down: what it buffered goes with this process
                log.warning(
                    "prediction log %s: %d records not written at exit",
                    self.datastore.where,
                    len(self._queue),
                )
                self.losses.lost(len(self._queue), "exit")
            self.report_drops()
        self._pid = -1  # a later record() finds the recorder closed
        self.datastore.close()

    def status(self) -> dict[str, Any]:
        """This worker's log: ok, or degraded with the reason, and the records it lost."""
        return self.losses.status()

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queue),
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
        }

    # -- feedback --------------------------------------------------------------------------

    def add_feedback(self, items: Sequence[Feedback]) -> FeedbackResult:
        """Store feedback for logged predictions; report ids no prediction has.

        This worker's queue is flushed first. Another worker's prediction may still sit in its
        queue for up to one flush interval, so unknown ids are looked up once more after that.
        """
        self.flush()
        with self.datastore.errors():
            return self._add_feedback(items)

    def _add_feedback(self, items: Sequence[Feedback]) -> FeedbackResult:
        result = store_feedback(self.datastore, items, self._clock())
        if result.unknown:
            time.sleep(2 * self.flush_interval)
            missing = set(result.unknown)
            retry = store_feedback(
                self.datastore, [i for i in items if i.request_id in missing], self._clock()
            )
            result = FeedbackResult(
                result.accepted + retry.accepted,
                retry.unknown,
                result.invalid_rows + retry.invalid_rows,
                result.overwritten + retry.overwritten,
            )
        if result.overwritten:
            log.warning(
                "feedback replaced the earlier truth of %d rows", result.overwritten,
                extra={"event": "feedback_overwritten", "rows": result.overwritten},
            )  # fmt: skip
        return result


def _to_row(record: PredictionRecord) -> tuple[Any, ...]:
    """The INSERT parameters of a record (`record()` already cut its inputs to size)."""
    return (
        record.request_id,
        record.at,
        record.model,
        record.version,
        record.alias,
        record.variant,
        int(record.shadow),
        record.status,
        record.latency_ms,
        record.rows,
        to_json(columnar(record.inputs)),
        to_json(record.outputs),
    )


def columnar(inputs: Any) -> Any:
    """Instances given as objects with the same keys in the same order, as
    `{"columns": [...], "data": [[...], ...]}` (pandas' split orient): the feature names once
    per record instead of once per instance. One instance, or anything else, as it is."""
    if not isinstance(inputs, list) or len(inputs) < 2 or not isinstance(inputs[0], dict):
        return inputs
    columns = list(inputs[0])
    if not all(isinstance(row, dict) and list(row) == columns for row in inputs):
        return inputs
    return {"columns": columns, "data": [list(row.values()) for row in inputs]}


def to_json(value: Any) -> str | None:
    """JSON text of inputs or outputs (numpy arrays included); None stays None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and (value.dtype == object or not value.flags.c_contiguous):
        value = value.tolist()
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback).decode()


def _fallback(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)
