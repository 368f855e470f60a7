"""`GET /dashboard` (a page, files under serving/web) and `GET /v1/dashboard/data` (its JSON).

The page loads nothing from elsewhere: its script and stylesheet come from this server, a
Content-Security-Policy says so to the browser, and the script draws SVG charts itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory
from marshmallow import INCLUDE, RAISE, Schema, fields, validate

from serving.api.jsonio import json_response, load_query
from serving.api.monitoring import HistogramSchema, monitored_datastore
from serving.api.openapi import doc
from serving.api.operators import shows_operators, without_operators
from serving.api.schemas import ErrorSchema, LogStatusSchema
from serving.api.state import get_monitor, get_state
from serving.monitoring.dashboard import build_dashboard
from serving.store.model_store import NAME_RE
from serving.telemetry.datastore import WINDOW_RE, parse_window

bp = Blueprint("dashboard", __name__)
WEB = Path(__file__).resolve().parent.parent / "web"
_ASSETS = {"dashboard.js", "dashboard.css"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class DashboardQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    window = fields.String(
        load_default="15m",
        validate=validate.Regexp(WINDOW_RE),
        metadata={"description": "how far back from now: 5m, 15m, 1h, 24h (points: at most 90)"},
    )
    model = fields.String(
        load_default=None,
        validate=validate.Regexp(NAME_RE),
        metadata={"description": "only this model (default: every model in the store)"},
    )


def _series(description: str) -> fields.List:
    return fields.List(
        fields.Float(allow_none=True), required=True, metadata={"description": description}
    )


class VersionSeriesSchema(Schema):
    model = fields.String(required=True)
    version = fields.Integer(required=True)
    variant = fields.String(allow_none=True, required=True)
    requests_per_s = _series("requests per second of this version and variant")


class SeriesSchema(Schema):
    t = fields.List(fields.Integer(), required=True, metadata={"description": "unix time"})
    requests_per_s = _series("requests per second, all workers")
    client_error_rate = _series("share of 4xx answers (null: no requests)")
    server_error_rate = _series("share of 5xx answers (null: no requests)")
    p50_ms = _series("median latency, estimated from log-spaced histogram bins")
    p95_ms = _series("95th percentile latency")
    p99_ms = _series("99th percentile latency")
    by_version = fields.List(fields.Nested(VersionSeriesSchema), required=True)


class TrafficSummarySchema(Schema):
    requests = fields.Integer(required=True)
    client_errors = fields.Integer(required=True)
    server_errors = fields.Integer(required=True)
    error_rate = fields.Float(allow_none=True, required=True)
    p50_ms = fields.Float(allow_none=True, required=True)
    p95_ms = fields.Float(allow_none=True, required=True)
    p99_ms = fields.Float(allow_none=True, required=True)


class TotalsSchema(TrafficSummarySchema):
    requests_per_s = fields.Float(required=True)
    unrouted = fields.Integer(
        required=True,
        metadata={"description": "prediction requests refused before choosing a model"},
    )


class VersionTrafficSchema(TrafficSummarySchema):
    version = fields.Integer(required=True, metadata={"description": "0: no version chosen"})
    variant = fields.String(allow_none=True, required=True)


class FeatureRowSchema(Schema):
    name = fields.String(required=True)
    kind = fields.String(required=True)
    rows = fields.Float(required=True)
    psi = fields.Float(allow_none=True, required=True)
    p_value = fields.Float(allow_none=True, required=True)
    status = fields.String(required=True)
    outside_range = fields.Float(allow_none=True)
    missing_rate = fields.Float(allow_none=True)
    oov_rate = fields.Float(allow_none=True, metadata={"description": "text features only"})


class WorstFeatureSchema(Schema):
    name = fields.String(required=True)
    status = fields.String(required=True)
    psi = fields.Float(allow_none=True, required=True)
    histogram = fields.Nested(HistogramSchema, required=True)


class DriftSummarySchema(Schema):
    version = fields.Integer(allow_none=True, required=True)
    status = fields.String(
        required=True,
        metadata={"description": "worst status, no_reference, or unavailable (see note)"},
    )
    reference = fields.Boolean(required=True)
    note = fields.String(allow_none=True, required=True)
    rows = fields.Integer()
    predictions = fields.Dict(keys=fields.String(), values=fields.Integer(), allow_none=True)
    features = fields.List(fields.Nested(FeatureRowSchema))
    worst = fields.List(
        fields.Nested(WorstFeatureSchema),
        metadata={"description": "the worst features, with reference vs live histograms"},
    )
    output = fields.Dict(allow_none=True)
    confidence = fields.Dict(allow_none=True)


class ModelPanelSchema(Schema):
    name = fields.String(required=True)
    aliases = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    routes = fields.Dict(required=True)
    shadows = fields.Dict(required=True)
    traffic = fields.List(fields.Nested(VersionTrafficSchema), required=True)
    drift = fields.Nested(DriftSummarySchema, required=True)
    problem = fields.String(metadata={"description": "why deployment.json was refused, if it was"})


class SwapSchema(Schema):
    class Meta:
        unknown = INCLUDE

    model = fields.String(required=True)
    at = fields.String(required=True)
    action = fields.String(required=True, metadata={"description": "promote, rollback, ..."})
    actor = fields.String()
    alias = fields.String()
    version = fields.Integer(allow_none=True)
    previous = fields.Integer(allow_none=True)


class DashboardSchema(Schema):
    window = fields.String(required=True)
    since = fields.String(required=True)
    until = fields.String(required=True)
    now = fields.Float(required=True)
    step = fields.Integer(required=True, metadata={"description": "seconds per point"})
    thresholds = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)
    series = fields.Nested(SeriesSchema, required=True)
    totals = fields.Nested(TotalsSchema, required=True)
    models = fields.List(fields.Nested(ModelPanelSchema), required=True)
    monitoring = fields.Boolean(
        required=True,
        metadata={"description": "false when SERVING_MONITOR_FLUSH=0: no traffic or drift counts"},
    )
    log = fields.Nested(
        LogStatusSchema,
        required=True,
        metadata={"description": "the prediction log in the worker that answered"},
    )
    swaps = fields.List(
        fields.Nested(SwapSchema),
        required=True,
        metadata={"description": "latest history.jsonl changes of what serves, newest first"},
    )


_QUERY = DashboardQuerySchema()


@bp.get("/v1/dashboard/data")
@doc(
    "What the dashboard shows: throughput, error rates and latency percentiles over time (all "
    "workers), traffic per version and variant, drift per model, recent swaps",
    "v1",
    {200: DashboardSchema, 404: ErrorSchema, 422: ErrorSchema, 503: ErrorSchema},
    query=DashboardQuerySchema,
)
def dashboard_data() -> Response:
    state = get_state()
    query = load_query(_QUERY, request)
    seconds = parse_window(query["window"])
    with monitored_datastore() as datastore:
        body = build_dashboard(
            datastore,
            state.store,
            seconds,
            time.time(),
            query["window"],
            state.settings.drift_warn,
            state.settings.drift_alert,
            query["model"],
        )
    body["monitoring"] = get_monitor() is not None
    if not shows_operators():
        body["swaps"] = [without_operators(event) for event in body["swaps"]]
    body["log"] = state.recorder.status()
    return json_response(body, headers={"Cache-Control": "no-store"})


@bp.get("/dashboard")
@doc(
    "The live dashboard (an HTML page; it polls /v1/dashboard/data)",
    "operations",
    {200: None},
    response_type="text/html",
)
def dashboard_page() -> Response:
    return _file("dashboard.html")


@bp.get("/dashboard/<name>")
@doc(
    "Files of the dashboard page (its script and stylesheet)",
    "operations",
    {200: None, 404: ErrorSchema},
    response_type="application/octet-stream",
)
def dashboard_asset(name: str) -> Response:
    if name not in _ASSETS:
        return json_response({"error": {"code": "not_found", "message": "no such file"}}, 404)
    return _file(name)


def _file(name: str) -> Response:
    # max_age=0: revalidated (ETag) on every load, so an upgraded server never runs an old script
    response = send_from_directory(WEB, name, max_age=0)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
