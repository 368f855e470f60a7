"""Per-request bookkeeping: request id, one JSON log line, metrics, traffic and drift counts.

A predict view puts one `dataplane.Outcome` on `g.outcome` once it has routed; everything here
reads that object (never per-protocol attributes), and schedules the outcome's shadow copy.
"""

from __future__ import annotations

import re
import time
import uuid

from flask import Flask, Response, request
from flask import g as _g

from serving.api.state import ServingState, get_state
from serving.dataplane import Outcome, shadow_task
from serving.telemetry.logs import REQUEST_ID, request_line
from serving.telemetry.recorder import PredictionRecord

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


def _finish(response: Response) -> Response:
    g = _g._get_current_object()  # one proxy lookup
    duration_ms = (time.perf_counter() - g.get("t0", time.perf_counter())) * 1000.0
    request_id = g.get("request_id") or uuid.uuid4().hex
    outcome: Outcome | None = g.get("outcome")  # set once by a predict view, after routing
    status = response.status_code
    _set_headers(response, request_id, outcome)
    state = get_state()
    if outcome is None:
        _count_refused(state, status, duration_ms)
    else:
        _count(state, outcome, status, duration_ms)
        _record(state, outcome, request_id, status, duration_ms)
        if status == 200 and outcome.shadow is not None:
            _schedule_shadow(state, outcome, request_id, response)
    _log_line(request_id, status, duration_ms, outcome)
    REQUEST_ID.set(None)  # lines logged between requests carry no request id
    return response


def _set_headers(response: Response, request_id: str, outcome: Outcome | None) -> None:
    """X-Request-ID always; the version that served, and the cache's answer when it is on."""
    headers = response.headers
    headers["X-Request-ID"] = request_id
    if outcome is not None:
        headers["X-Model-Version"] = str(outcome.version)
        cache = outcome.result.cache if outcome.result is not None else None
        if cache:
            headers["X-Cache"] = cache


def _count_refused(state: ServingState, status: int, duration_ms: float) -> None:
    """StatsD for any request without an outcome; the dashboard for refused predictions."""
    state.metrics.request(status, duration_ms)
    if state.monitor is not None and status >= 400 and request.path.endswith(_PREDICT_PATHS):
        state.monitor.count(None, None, None, status, duration_ms)


def _count(state: ServingState, outcome: Outcome, status: int, duration_ms: float) -> None:
    """StatsD (timer, status, predicted classes) and the dashboard's traffic counts."""
    result = outcome.result
    counts = result.class_counts() if result is not None else ()
    model, version, variant = outcome.model, outcome.version, outcome.variant
    state.metrics.request(status, duration_ms, model, version, counts, variant=variant)
    if state.monitor is not None:
        state.monitor.count(model, version, variant, status, duration_ms)


def _record(
    state: ServingState, outcome: Outcome, request_id: str, status: int, duration_ms: float
) -> None:
    """The prediction log (every routed request) and the drift monitor (answered ones)."""
    result = outcome.result if status == 200 else None
    rows = outcome.result.rows if outcome.result is not None else 0
    state.recorder.record(
        PredictionRecord(
            request_id, time.time(), outcome.model, outcome.version, outcome.alias,
            outcome.variant, status, duration_ms, rows,
            outcome.inputs if result is not None else None,
            result.predictions if result is not None else None,
        )
    )  # fmt: skip
    if result is not None and state.monitor is not None:
        state.monitor.record(
            outcome.model,
            outcome.version,
            result.features,
            result.predictions,
            result.probabilities,
        )


def _schedule_shadow(
    state: ServingState, outcome: Outcome, request_id: str, response: Response
) -> None:
    """The shadow's copy runs when the server closes the response, after it is sent."""
    task = shadow_task(outcome, request_id, state.recorder, state.settings.max_instances)
    if task is not None:
        response.call_on_close(task)


def _log_line(request_id: str, status: int, duration_ms: float, outcome: Outcome | None) -> None:
    result = outcome.result if outcome is not None else None
    request_line(
        {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": status,
            "model": outcome.model if outcome is not None else None,
            "version": outcome.version if outcome is not None else None,
            "alias": outcome.alias if outcome is not None else None,
            "variant": outcome.variant if outcome is not None else None,
            "rows": result.rows if result is not None else None,
            "duration_ms": round(duration_ms, 3),
        }
    )
