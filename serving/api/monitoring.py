"""`GET /v1/models/<name>/monitoring`: drift and output signals of a version over a window."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from flask import Blueprint, Response, request
from marshmallow import RAISE, Schema, fields, validate

from serving.api.jsonio import json_response, load_query
from serving.api.openapi import doc
from serving.api.schemas import ErrorSchema
from serving.api.state import get_monitor, get_state
from serving.monitoring.report import build_report
from serving.telemetry.datastore import WINDOW_RE, DataStore, parse_window

bp = Blueprint("monitoring", __name__, url_prefix="/v1")


@contextlib.contextmanager
def monitored_datastore() -> Iterator[DataStore]:
    """The store the drift monitor writes, flushed first so this worker's latest requests
    count too; with monitoring off, the data directory's store, opened for this request."""
    monitor = get_monitor()
    if monitor is not None:
        monitor.flush()
        yield monitor.datastore
        return
    settings = get_state().settings
    datastore = DataStore(settings.data_dir, settings.database_url)
    try:
        yield datastore
    finally:
        datastore.close()


class MonitoringQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    window = fields.String(
        load_default="1h",
        validate=validate.Regexp(WINDOW_RE),
        metadata={"description": "how far back from now (to the minute): 30m, 1h, 24h, 7d"},
    )
    version = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1),
        metadata={"description": "the version (default: the one production serves)"},
    )


class HistogramSchema(Schema):
    bins = fields.List(fields.String(), required=True)
    reference = fields.List(fields.Float(), required=True, metadata={"description": "shares"})
    live = fields.List(fields.Float(), required=True, metadata={"description": "shares"})


class _Scored(Schema):
    rows = fields.Float(required=True)
    psi = fields.Float(allow_none=True, required=True)
    p_value = fields.Float(
        allow_none=True,
        required=True,
        metadata={"description": "chi-square goodness of fit of the live bins to the reference"},
    )
    status = fields.String(
        required=True,
        metadata={"description": "ok, warn, alert (PSI thresholds) or insufficient_data"},
    )
    histogram = fields.Nested(HistogramSchema, required=True)


class FeatureDriftSchema(_Scored):
    name = fields.String(required=True)
    kind = fields.String(
        required=True,
        metadata={"description": "numeric, categorical or text (text: bins of its length)"},
    )
    missing_rate = fields.Float(allow_none=True, required=True)
    reference_missing_rate = fields.Float(allow_none=True, required=True)
    outside_range = fields.Float(
        allow_none=True, metadata={"description": "share beyond the reference min/max"}
    )
    mean = fields.Float(allow_none=True)
    reference_mean = fields.Float(allow_none=True)
    mean_shift_std = fields.Float(allow_none=True)
    unseen_share = fields.Float(allow_none=True, metadata={"description": "unseen categories"})
    oov_rate = fields.Float(
        allow_none=True,
        metadata={"description": "text: share of tokens out of the fitted vocabulary"},
    )
    reference_oov_rate = fields.Float(allow_none=True)
    oov_psi = fields.Float(
        allow_none=True, metadata={"description": "text: PSI of in- vs out-of-vocabulary tokens"}
    )


class OutputDriftSchema(_Scored):
    kind = fields.String(required=True, metadata={"description": "classes or numeric"})
    mean = fields.Float(allow_none=True)
    reference_mean = fields.Float(allow_none=True)


class ConfidenceSchema(_Scored):
    mean = fields.Float(allow_none=True, required=True)
    reference_mean = fields.Float(allow_none=True, required=True)
    shift = fields.Float(allow_none=True, required=True)


class MonitoringReportSchema(Schema):
    model = fields.String(required=True)
    version = fields.Integer(required=True)
    window = fields.String(required=True)
    since = fields.String(required=True)
    until = fields.String(required=True)
    rows = fields.Integer(required=True, metadata={"description": "rows predicted (all workers)"})
    thresholds = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)
    predictions = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        allow_none=True,
        required=True,
        metadata={"description": "rows per predicted class (classifiers)"},
    )
    reference = fields.Boolean(
        required=True, metadata={"description": "whether the version has reference statistics"}
    )
    note = fields.String(allow_none=True, required=True)
    status = fields.String(
        required=True, metadata={"description": "the worst status, or no_reference"}
    )
    features = fields.List(fields.Nested(FeatureDriftSchema), required=True)
    output = fields.Nested(OutputDriftSchema, allow_none=True, required=True)
    confidence = fields.Nested(
        ConfidenceSchema,
        allow_none=True,
        required=True,
        metadata={"description": "only from requests that asked for probabilities"},
    )


_QUERY = MonitoringQuerySchema()


@bp.get("/models/<name>/monitoring")
@doc(
    "Drift monitoring of a version over a window: per-feature PSI and p-value against the "
    "reference data, output drift, confidence shift, out-of-range and missing rates",
    "v1",
    {200: MonitoringReportSchema, 404: ErrorSchema, 422: ErrorSchema, 503: ErrorSchema},
    query=MonitoringQuerySchema,
)
def monitoring_report(name: str) -> Response:
    state = get_state()
    query = load_query(_QUERY, request)
    seconds = parse_window(query["window"])
    settings = state.settings
    with monitored_datastore() as datastore:
        body = build_report(
            datastore,
            state.store,
            name,
            query["version"],
            seconds,
            time.time(),
            query["window"],
            settings.drift_warn,
            settings.drift_alert,
        )
    for feature in body["features"]:
        if feature["psi"] is not None:
            state.metrics.set_drift(name, body["version"], feature["name"], feature["psi"])
    if body["output"] and body["output"]["psi"] is not None:
        state.metrics.set_drift(name, body["version"], "__output__", body["output"]["psi"])
    return json_response(body)
