"""The prediction recorder interface: what the request path hands over for the prediction log.

The request path only calls `record()` (cheap: sampling and a queue append); storage happens
off the request path in the implementation. `Recorder` itself records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    at: float  # unix time
    model: str
    version: int
    alias: str | None  # None for a pinned version
    variant: str | None  # "v<version>" when the alias is split, else None
    status: int
    latency_ms: float
    rows: int
    inputs: Any  # the validated instances (rows or objects), None on a failed request
    outputs: Any  # predictions as a list, None on a failed request
    shadow: bool = False  # True for a shadow's copy of a request (outputs only compared)


class Recorder:
    """Records nothing (the prediction log is off)."""

    def record(self, record: PredictionRecord) -> None:
        """Hand one record over; never blocks or raises into a request."""

    def status(self) -> dict[str, Any]:
        """The log's state in this worker (`serving.telemetry.losses`): the null one is off."""
        return {"status": "off", "reason": None, "dropped": 0}

    def close(self) -> None:
        """Flush what is pending and stop."""
