"""What the prediction log lost, by reason: counted, handed to the metrics, and its status.

Every record that never reaches the data store is counted once under one reason:

- `queue_full`: the worker's queue was full while the store was writing (more traffic than
  the writer keeps up with);
- `disk_full`: the disk of the data store is full (SQLite's SQLITE_FULL, ENOSPC), so the queue
  filled while its writes failed;
- `db_unavailable`: the store could not be reached or was locked (a failure that may pass);
- `db_error`: the store refused the records (not retried);
- `exit`: the worker stopped with records it could not write.

`report()` hands the new counts to `on_drop` (the `serving_telemetry_dropped_total{component,
reason}` counter and StatsD) and warns at most every `WARN_INTERVAL` seconds. `status()` is
the log's state in this worker: `degraded` while writes fail or within `DEGRADED_FOR` seconds
of a loss, with the reason and the count, else `ok`.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)
WARN_INTERVAL = 30.0  # seconds between two warnings about lost records
DEGRADED_FOR = 60.0  # seconds a loss keeps the status `degraded`
REASONS = ("queue_full", "disk_full", "db_unavailable", "db_error", "exit")


class OnDrop(Protocol):
    def __call__(self, component: str, count: int, reason: str = ...) -> None: ...


def failure_reason(exc: BaseException, transient: bool) -> str:
    """The reason a write failed: `disk_full`, `db_unavailable` (may pass) or `db_error`."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full"
    if isinstance(exc, sqlite3.Error) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
    ):
        return "disk_full"
    return "db_unavailable" if transient else "db_error"


class Losses:
    """The records one worker's prediction log lost, by reason."""

    def __init__(self, on_drop: OnDrop | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._on_drop = on_drop
        self._clock = clock
        self.by_reason: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self.failure: str | None = None  # why writes fail now; None while they succeed
        self._last: str | None = None  # the reason of the last loss
        self._last_at = -DEGRADED_FOR
        self._warned, self._warned_at = 0, -WARN_INTERVAL

    @property
    def total(self) -> int:
        return sum(list(self.by_reason.values()))  # a request thread may add a reason

    def lost(self, count: int, reason: str | None = None) -> None:
        """Count `count` records lost; `reason` defaults to the current failure or a full queue."""
        if count <= 0:
            return
        reason = reason or self.failure or "queue_full"
        self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        self._last, self._last_at = reason, self._clock()

    def report(self, queued: int) -> int:
        """Hand the losses since the last call to `on_drop`; warn (rate-limited)."""
        new = 0
        for reason, count in list(self.by_reason.items()):  # `lost` runs in request threads
            fresh = count - self._reported.get(reason, 0)
            if fresh <= 0:
                continue
            self._reported[reason] = count
            new += fresh
            if self._on_drop is not None:
                self._on_drop("predlog", fresh, reason)
        total = self.total
        if new and self._clock() - self._warned_at >= WARN_INTERVAL:
            self._warned_at = self._clock()
            log.warning(
                "prediction log: %d records lost since the last warning (%d in all: %s; %d queued)",
                total - self._warned, total, _by_reason(self.by_reason), queued,
                extra={"event": "predlog_lost", "lost": total, "reasons": dict(self.by_reason)},
            )  # fmt: skip
            self._warned = total
        return new

    def status(self) -> dict[str, Any]:
        """`{"status": "ok" | "degraded", "reason": str | None, "dropped": int}`."""
        recent = self._clock() - self._last_at < DEGRADED_FOR
        reason = self.failure or (self._last if recent else None)
        return {
            "status": "degraded" if reason else "ok",
            "reason": reason,
            "dropped": self.total,
        }


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in counts.items())
