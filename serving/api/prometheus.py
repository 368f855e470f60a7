"""GET /metrics: Prometheus text of every worker, and the in-flight request gauge.

A scrape reaches one worker; in multiprocess mode (under gunicorn) it reads the files of all of
them, so it does not matter which. The scrape is counted in `serving_requests_total` like any
request (model label empty), after its own text is rendered; it is left out of the in-flight
gauge and, naming no model, of the latency histogram.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app

from serving.api.openapi import doc
from serving.telemetry.prometheus import CONTENT_TYPE, PrometheusMetrics

EXTENSION = "serving.prometheus"
bp = Blueprint("prometheus", __name__)


def init_app(app: Flask, start_sampler: bool = True) -> PrometheusMetrics:
    """Build this worker's Prometheus metrics and hang them off the app."""
    metrics = PrometheusMetrics()
    app.extensions[EXTENSION] = metrics
    if start_sampler:
        metrics.ensure_sampling()
    return metrics


def register(app: Flask) -> None:
    """The /metrics route and the in-flight hooks (after `init_app`)."""
    metrics = get_prometheus(app)
    app.register_blueprint(bp)
    app.before_request(metrics.request_started)
    # teardown runs once per request whatever happened to it, so the gauge cannot drift up.
    app.teardown_request(lambda _exc: metrics.request_finished())


def get_prometheus(app: Flask | None = None) -> PrometheusMetrics:
    target = app if app is not None else current_app
    return target.extensions[EXTENSION]  # type: ignore[no-any-return]


@bp.get("/metrics")
@doc(
    "Prometheus metrics of every worker (text exposition format 0.0.4)",
    "operations",
    {200: {"type": "string"}},
    response_type="text/plain; version=0.0.4",
)
def metrics() -> Response:
    prometheus = get_prometheus()
    prometheus.request_finished()  # a scrape does not count itself as in flight...
    try:
        body = prometheus.render()
    finally:
        prometheus.request_started()  # ...and teardown takes it back out
    return Response(body, content_type=CONTENT_TYPE)
