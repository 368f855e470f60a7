"""Per-request bookkeeping: request id, one JSON log line, metrics, traffic and drift counts."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, request
from flask import g as _g

from serving.api.state import get_state
from serving.telemetry.logs import REQUEST_ID
from serving.telemetry.recorder import PredictionRecord

log = logging.getLogger("serving.request")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Prediction routes (/v1, V2, MLflow): refused before choosing a model, they still count as
# failed traffic on the dashboard.
_PREDICT_PATHS = ("/predict", "/infer", "/invocations")


def register(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    g = _g._get_current_object()
    g.t0 = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
    REQUEST_ID.set(g.request_id)
    g.model = g.version = g.rows = None
    g.class_counts = ()


def _finish(response: Response) -> Response:
    g = _g._get_current_object()  # one proxy lookup, not one per attribute
    duration_ms = (time.perf_counter() - g.get("t0", time.perf_counter())) * 1000.0
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers["X-Request-ID"] = request_id
    model, version = g.get("model"), g.get("version")
    if version is not None:
        response.headers["X-Model-Version"] = str(version)
        if g.get("cache"):
            response.headers["X-Cache"] = g.cache
    state = get_state()
    status = response.status_code
    state.metrics.request(
        status, duration_ms, model, version, g.get("class_counts", ()), variant=g.get("variant")
    )
    monitor = state.monitor
    if monitor is not None and (
        model is not None or (status >= 400 and request.path.endswith(_PREDICT_PATHS))
    ):
        monitor.count(model, version, g.get("variant"), status, duration_ms)  # the dashboard
    if model is not None and version is not None:
        ok = response.status_code == 200
        state.recorder.record(
            PredictionRecord(
                request_id,
                time.time(),
                model,
                version,
                g.get("alias"),
                g.get("variant"),
                response.status_code,
                duration_ms,
                g.get("rows") or 0,
                g.get("instances") if ok else None,
                g.get("outputs") if ok else None,
            )
        )
        if ok and monitor is not None:
            monitor.record(
                model, version, g.get("features"), g.get("outputs"), g.get("probabilities")
            )
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "model": model,
            "version": version,
            "alias": g.get("alias"),
            "variant": g.get("variant"),
            "rows": g.get("rows"),
            "duration_ms": round(duration_ms, 3),
        },
    )
    REQUEST_ID.set(None)  # lines logged between requests carry no request id
    return response
