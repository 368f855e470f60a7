"""Shadow traffic: a copy of a request scored after its response is sent, compared, logged.

The shadow runs in `call_on_close`: gunicorn calls it once the response is written, so neither
its failures nor its slowness reach the client; the comparison goes to the log and the recorder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flask import Response, g

from serving.api.state import get_state
from serving.runtime.model import LoadedModel
from serving.runtime.predict import predict
from serving.telemetry.recorder import PredictionRecord

log = logging.getLogger("serving.shadow")


def shadow_call(
    shadow: LoadedModel, payload: dict[str, Any], response: Response
) -> Callable[[], None]:
    """Bind what the shadow needs now (the request context is gone when it runs)."""
    state = get_state()
    request_id = g.request_id
    primary = g.get("outputs") if response.status_code == 200 else None
    alias = g.get("alias")
    recorder = state.recorder

    def run() -> None:
        if primary is None:
            return
        started = time.perf_counter()
        try:
            result = predict(shadow, payload["instances"], False, state.settings.max_instances)
        except Exception as exc:  # a shadow's failure is only logged
            log.warning(
                "shadow failed: %s",
                exc,
                extra={
                    "request_id": request_id,
                    "model": shadow.name,
                    "version": shadow.version,
                    "event": "shadow_failed",
                },
            )
            return
        latency = (time.perf_counter() - started) * 1000.0
        outputs = np.asarray(result.predictions)
        agree = float(np.mean(outputs == np.asarray(primary))) if outputs.shape else 0.0
        log.info(
            "shadow",
            extra={
                "request_id": request_id,
                "model": shadow.name,
                "version": shadow.version,
                "agreement": agree,
                "duration_ms": round(latency, 3),
                "event": "shadow",
            },
        )
        recorder.record(
            PredictionRecord(
                request_id,
                time.time(),
                shadow.name,
                shadow.version,
                alias,
                "shadow",
                200,
                latency,
                result.rows,
                None,
                outputs.tolist(),
                shadow=True,
            )
        )

    return run
