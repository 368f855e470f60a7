"""How a worker's loader takes an unreachable model store: count it, say it once, back off."""

from __future__ import annotations

import logging

from serving.telemetry.metrics import Metrics

log = logging.getLogger("serving.runtime.loader")
MAX_BACKOFF_S = 30.0


class StoreHealth:
    """Failed polls in a row; the wait before the next poll grows with them (max 30 s)."""

    def __init__(self, metrics: Metrics, interval: float) -> None:
        self._metrics = metrics
        self._interval = interval
        self.failed_polls = 0

    def down(self, operation: str, exc: Exception) -> None:
        self._metrics.store_unavailable(operation)
        self.failed_polls += 1
        if self.failed_polls == 1 or self.failed_polls % 30 == 0:  # not a line per poll
            log.error(
                "model store unreachable (%s, %d polls): %s; serving what is loaded",
                operation, self.failed_polls, exc, extra={"event": "store_unavailable"},
            )  # fmt: skip

    def up(self) -> None:
        if self.failed_polls:
            log.warning(
                "model store reachable again after %d failed polls", self.failed_polls,
                extra={"event": "store_available"},
            )  # fmt: skip
        self.failed_polls = 0

    def next_poll_in(self) -> float:
        """The poll interval, doubled per failed poll while the store is down."""
        if not self.failed_polls:
            return self._interval
        ceiling = max(MAX_BACKOFF_S, self._interval)
        return min(ceiling, self._interval * 2 ** min(self.failed_polls, 10))
