"""Feedback and the A/B verdict: `POST /v1/feedback`, `GET /v1/models/<name>/ab`.

Thin views: marshmallow checks the envelope, `predlog` stores feedback against the logged
predictions, `abtest` computes the report. Both read the shared store, so any worker answers
for all of them.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import Any

from flask import Blueprint, Response, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from serving.api.jsonio import json_response, read_json
from serving.api.openapi import doc
from serving.api.schemas import ErrorSchema
from serving.api.state import get_state
from serving.errors import Forbidden, InvalidInput, ModelNotFound, Unauthorized
from serving.rollouts.abtest import build_report
from serving.store.model_store import DEFAULT_ALIAS, NAME_RE
from serving.telemetry.datastore import WINDOW_RE, parse_window
from serving.telemetry.feedback import Feedback
from serving.telemetry.predlog import PredictionLogOff, SQLiteRecorder

bp = Blueprint("feedback", __name__, url_prefix="/v1")
MAX_FEEDBACK_ITEMS = 1000
_REQUEST_ID = r"^[A-Za-z0-9._:-]{1,128}$"  # what X-Request-ID accepts, so what can be logged


class FiniteNumber(fields.Field):
    """A JSON number (not a boolean, not a string), finite."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ValidationError("Must be a finite number.")
        return value


class Label(fields.Field):
    """A class label: a string, a number or a boolean, as the model predicts it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if type(value) is str and 0 < len(value) <= 256:
            return value
        if type(value) is bool or (type(value) in (int, float) and math.isfinite(value)):
            return value
        raise ValidationError("Must be a class label: a string (1-256 characters) or a number.")


class FeedbackItemSchema(Schema):
    class Meta:
        unknown = RAISE

    request_id = fields.String(
        required=True,
        validate=validate.Regexp(_REQUEST_ID),
        metadata={"description": "the request_id of the prediction (body or X-Request-ID)"},
    )
    label = Label(metadata={"description": "the true class (classifiers)", "example": "setosa"})
    value = FiniteNumber(metadata={"description": "the true value (regressors)", "type": "number"})
    row = fields.Integer(
        strict=True,
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"description": "which instance of the request (default 0)"},
    )

    @validates_schema
    def _one_truth(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("label" in data) == ("value" in data):
            raise ValidationError("give exactly one of label (classifier) or value (regressor)")


class FeedbackRequestSchema(FeedbackItemSchema):
    """One item, or `{"feedback": [items]}`."""

    request_id = fields.String(
        validate=validate.Regexp(_REQUEST_ID),
        metadata={"description": "one item: the request_id of the prediction"},
    )
    row = fields.Integer(
        strict=True,
        validate=validate.Range(min=0),
        metadata={"description": "one item: which instance of the request (default 0)"},
    )
    feedback = fields.List(
        fields.Nested(FeedbackItemSchema),
        validate=validate.Length(min=1, max=MAX_FEEDBACK_ITEMS),
        metadata={"description": f"a batch of up to {MAX_FEEDBACK_ITEMS} items"},
    )

    @validates_schema
    def _one_truth(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "feedback" in data:
            if set(data) != {"feedback"}:
                raise ValidationError("send either one item or a feedback list, not both")
            return
        if "request_id" not in data:
            raise ValidationError("Missing data for required field.", "request_id")
        super()._one_truth(data, **kwargs)


class FeedbackRowSchema(Schema):
    request_id = fields.String(required=True)
    row = fields.Integer(required=True)
    rows = fields.Integer(required=True, metadata={"description": "rows that prediction had"})


class FeedbackResponseSchema(Schema):
    accepted = fields.Integer(required=True)
    unknown = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "request ids with no logged prediction (not stored)"},
    )
    invalid_rows = fields.List(fields.Nested(FeedbackRowSchema), required=True)
    overwritten = fields.Integer(
        required=True,
        metadata={"description": "accepted items that replaced an earlier truth of their row"},
    )


class ABQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    alias = fields.String(
        load_default=DEFAULT_ALIAS,
        validate=validate.Regexp(NAME_RE),
        metadata={"description": "the alias whose variants are compared"},
    )
    window = fields.String(
        load_default="24h",
        validate=validate.Regexp(WINDOW_RE),
        metadata={"description": "how far back from now: 90s, 30m, 1h, 24h, 7d (at most 366d)"},
    )


class ABLatencySchema(Schema):
    p50 = fields.Float(allow_none=True, required=True)
    p95 = fields.Float(allow_none=True, required=True)
    p99 = fields.Float(allow_none=True, required=True)


class ABMetricSchema(Schema):
    metric = fields.String(required=True, metadata={"enum": ["accuracy", "mae"]})
    labelled = fields.Integer(required=True)
    value = fields.Float(allow_none=True, required=True)
    ci95 = fields.List(fields.Float(allow_none=True), allow_none=True, required=True)


class ABComparisonSchema(Schema):
    against = fields.String(required=True)
    test = fields.String(required=True)
    difference = fields.Float(allow_none=True, required=True)
    statistic = fields.Float(allow_none=True, required=True)
    p_value = fields.Float(allow_none=True, required=True)
    alpha = fields.Float(required=True)
    significant = fields.Boolean(required=True)
    better = fields.String(allow_none=True, required=True)
    effect_size = fields.Float(allow_none=True, required=True)
    needed_per_variant = fields.Integer(allow_none=True, required=True)
    more_per_variant = fields.Integer(allow_none=True, required=True)


class ABVariantSchema(Schema):
    variant = fields.String(required=True)
    version = fields.Integer(required=True)
    primary = fields.Boolean(required=True)
    requests = fields.Integer(required=True)
    rows = fields.Integer(required=True)
    errors = fields.Integer(required=True)
    error_rate = fields.Float(allow_none=True, required=True)
    latency_ms = fields.Nested(ABLatencySchema, required=True)
    predictions = fields.Dict(
        required=True,
        metadata={"description": "classes: [{label, count}] or count/mean/std/min/p05..p95/max"},
    )
    feedback = fields.Nested(ABMetricSchema, allow_none=True, required=True)
    vs_primary = fields.Nested(ABComparisonSchema, allow_none=True, required=True)


class ABShadowSchema(Schema):
    version = fields.Integer(required=True)
    requests = fields.Integer(required=True)
    rows = fields.Integer(required=True)
    agreement = fields.Float(allow_none=True, required=True)
    mean_abs_difference = fields.Float(allow_none=True)


class ABVerdictSchema(Schema):
    winner = fields.String(allow_none=True, required=True)
    text = fields.String(required=True)


class ABReportSchema(Schema):
    model = fields.String(required=True)
    alias = fields.String(required=True)
    window = fields.String(required=True)
    window_seconds = fields.Float(required=True)
    since = fields.String(required=True)
    until = fields.String(required=True)
    task = fields.String(required=True)
    primary = fields.String(allow_none=True, required=True)
    variants = fields.List(fields.Nested(ABVariantSchema), required=True)
    shadows = fields.List(fields.Nested(ABShadowSchema), required=True)
    verdict = fields.Nested(ABVerdictSchema, required=True)


_REQUEST = FeedbackRequestSchema()
_AB_QUERY = ABQuerySchema()
_ERRORS = {status: ErrorSchema for status in (400, 401, 403, 413, 415, 422, 503)}


@bp.post("/feedback")
@doc(
    "Feedback: the true label or value of logged predictions (one item or a batch)",
    "v1",
    {200: FeedbackResponseSchema, **_ERRORS},
    FeedbackRequestSchema,
    security=[{}, {"bearer": []}],  # open until a feedback or admin token is configured
)
def post_feedback() -> Response:
    _authorize_feedback()
    payload, _ = read_json(request)
    try:
        data = _REQUEST.load(payload)
    except ValidationError as err:
        details = _text_keys(err.messages_dict)
        raise InvalidInput("the feedback does not match the schema", details) from None
    items = [
        Feedback(
            item["request_id"],
            item["label"] if "label" in item else item["value"],
            "label" if "label" in item else "value",
            item.get("row", 0),
        )
        for item in data.get("feedback") or [data]
    ]
    result = _prediction_log().add_feedback(items)
    return json_response(
        {
            "accepted": result.accepted,
            "unknown": result.unknown,
            "invalid_rows": result.invalid_rows,
            "overwritten": result.overwritten,
        }
    )


@bp.after_request
def _challenge(response: Response) -> Response:
    if response.status_code == 401 and request.path.endswith("/feedback"):
        response.headers["WWW-Authenticate"] = 'Bearer realm="serving feedback"'
    return response


def _authorize_feedback() -> None:
    """With SERVING_FEEDBACK_TOKEN or SERVING_ADMIN_TOKEN set, feedback needs one of them as
    `Authorization: Bearer <token>` (constant-time compare): 401 without, 403 wrong."""
    settings = get_state().settings
    tokens = [t for t in (settings.feedback_token, settings.admin_token) if t]
    if not tokens:
        return  # no token configured: open, as documented (set one before exposing it)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the feedback token as 'Authorization: Bearer <token>'")
    if not any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens):
        raise Forbidden("the bearer token is neither the feedback token nor the admin token")


@bp.get("/models/<name>/ab")
@doc(
    "A/B report of an alias over a window: traffic, latency, predictions, accuracy or MAE "
    "per variant, significance against the primary, a verdict, shadow agreement",
    "v1",
    {200: ABReportSchema, 404: ErrorSchema, 422: ErrorSchema, 503: ErrorSchema},
    query=ABQuerySchema,
)
def ab_report(name: str) -> Response:
    state = get_state()
    if not state.store.exists(name):
        raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
    try:
        query = _AB_QUERY.load(request.args.to_dict())
    except ValidationError as err:
        raise InvalidInput("bad query parameters", _text_keys(err.messages_dict)) from None
    alias, window = query["alias"], query["window"]
    seconds = parse_window(window)
    log = _prediction_log()
    log.flush()  # this worker's latest predictions count too
    body = build_report(log.datastore, state.store, name, alias, seconds, time.time(), window)
    return json_response(body)


def _text_keys(messages: Any) -> Any:
    """marshmallow keys list errors by item index; JSON objects need string keys."""
    if isinstance(messages, dict):
        return {str(key): _text_keys(value) for key, value in messages.items()}
    return messages


def _prediction_log() -> SQLiteRecorder:
    recorder = get_state().recorder
    if not isinstance(recorder, SQLiteRecorder):
        raise PredictionLogOff("the prediction log is off (SERVING_LOG_SAMPLE=0)")
    return recorder
