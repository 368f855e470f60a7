"""Shadow traffic: a copy of a request scored after its response is sent, compared, logged.

The web layer schedules the callable after the response is written (gunicorn closes the
response then), so neither a shadow's failures nor its slowness reach the client; the
comparison goes to the log and the prediction recorder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from serving.dataplane.outcome import Outcome
from serving.runtime.model import LoadedModel
from serving.runtime.predict import PredictionResult
from serving.telemetry.recorder import PredictionRecord, Recorder

log = logging.getLogger("serving.shadow")


def shadow_task(
    outcome: Outcome, request_id: str, recorder: Recorder, max_instances: int | None
) -> Callable[[], None] | None:
    """The shadow's copy of a predicted request, bound now; None when there is nothing to do."""
    shadow, rows, primary = outcome.shadow, outcome.rows, outcome.result
    if shadow is None or rows is None or primary is None:
        return None
    alias = outcome.alias

    def run() -> None:
        started = time.perf_counter()
        try:
            result = rows.predict(shadow, False, max_instances)
        except Exception as exc:  # a shadow's failure is only logged
            log.warning("shadow failed: %s", exc, extra=_extra(request_id, shadow, "shadow_failed"))
            return
        latency = (time.perf_counter() - started) * 1000.0
        outputs = _compare(request_id, shadow, result, primary, latency)
        record = PredictionRecord(
            request_id, time.time(), shadow.name, shadow.version, alias, "shadow", 200,
            latency, result.rows, None, outputs.tolist(), shadow=True,
        )  # fmt: skip
        recorder.record(record)

    return run


def _compare(
    request_id: str,
    shadow: LoadedModel,
    result: PredictionResult,
    primary: PredictionResult,
    latency_ms: float,
) -> np.ndarray:
    """Log the share of rows where the shadow agrees with the primary; its outputs."""
    outputs = np.asarray(result.predictions)
    agree = float(np.mean(outputs == np.asarray(primary.predictions))) if outputs.shape else 0.0
    extra = _extra(request_id, shadow, "shadow")
    log.info("shadow", extra={**extra, "agreement": agree, "duration_ms": round(latency_ms, 3)})
    return outputs


def _extra(request_id: str, shadow: LoadedModel, event: str) -> dict[str, object]:
    return {
        "request_id": request_id,
        "model": shadow.name,
        "version": shadow.version,
        "event": event,
    }
