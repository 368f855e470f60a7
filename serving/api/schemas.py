"""marshmallow schemas for request envelopes. Values inside `instances` are checked by numpy."""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, post_load, validate

from serving.store.model_store import DEFAULT_ALIAS, NAME_RE


class StrictBoolean(fields.Field):
    """true or false, nothing else (marshmallow's Boolean also takes 1, "yes", "on"...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise ValidationError("Must be true or false.")
        return value


class Instances(fields.Field):
    """A non-empty JSON array; the rows themselves are validated against the model's schema."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if type(value) is not list:
            raise ValidationError("Must be a list of instances (rows or objects).")
        if not value:
            raise ValidationError("Must hold at least one instance.")
        return value


class PredictRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    instances = Instances(
        required=True,
        metadata={
            "description": "rows (lists in feature order) or objects keyed by feature name; "
            "a model with one text feature also takes bare strings",
            "minItems": 1,
            "items": {
                "oneOf": [{"type": "array", "items": {}}, {"type": "object"}, {"type": "string"}]
            },
            "example": [[5.1, 3.5, 1.4, 0.2]],
        },
    )
    return_proba = StrictBoolean(load_default=False)
    return_scores = StrictBoolean(
        load_default=False,
        metadata={
            "description": "add `scores` (decision_function, or an outlier detector's "
            "score_samples); 422 for a model without"
        },
    )
    routing_key = fields.String(
        validate=lambda v: 0 < len(v) <= 256,
        metadata={
            "description": "sticky A/B key (or header X-Routing-Key): same key, same variant"
        },
    )


# -- response schemas: used to generate /openapi.json (and checked against live responses) ----


class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"example": "invalid_input"})
    message = fields.String(required=True)
    details = fields.Dict(metadata={"description": "field-level details: row, feature, ..."})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class PredictResponseSchema(Schema):
    model = fields.String(required=True)
    version = fields.Integer(required=True)
    predictions = fields.List(fields.Raw(), required=True)
    probabilities = fields.List(fields.List(fields.Float()))
    classes = fields.List(fields.Raw())
    scores = fields.List(
        fields.Raw(),
        metadata={
            "description": "with return_scores: a number per row, or a list per row "
            "(one per class) for a multiclass decision_function"
        },
    )
    request_id = fields.String(required=True)
    variant = fields.String(metadata={"description": "the variant that served, when split"})


class FeatureSchema(Schema):
    name = fields.String(required=True)
    kind = fields.String(
        required=True, metadata={"enum": ["numeric", "categorical", "boolean", "text"]}
    )
    nullable = fields.Boolean(
        required=True,
        metadata={"description": "takes null (or NaN), fed to the model as a missing value"},
    )


class ModelSummarySchema(Schema):
    name = fields.String(required=True)
    versions = fields.List(fields.Integer(), required=True)
    aliases = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    serving = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)


class LogStatusSchema(Schema):
    """The prediction log in the worker that answered (serving.telemetry.losses)."""

    status = fields.String(
        required=True,
        metadata={
            "enum": ["ok", "degraded", "off"],
            "description": "degraded while writes fail or for 60 s after a record was lost",
        },
    )
    reason = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "enum": ["queue_full", "disk_full", "db_unavailable", "db_error", "exit", None],
            "description": "why it is degraded: the current write failure or the last loss",
        },
    )
    dropped = fields.Integer(
        required=True, metadata={"description": "records this worker lost since it started"}
    )


class ModelDetailSchema(ModelSummarySchema):
    routes = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        metadata={"description": "split aliases: variants (version, weight), sticky, experiment"},
    )
    shadows = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "alias -> shadow"}
    )
    problems = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    worker = fields.Dict(
        required=True,
        metadata={"description": "this worker: pid, and the routes and shadows it applies now"},
    )
    log = fields.Nested(LogStatusSchema, required=True)
    task = fields.String()
    features = fields.List(fields.Nested(FeatureSchema))
    classes = fields.List(fields.Raw(), allow_none=True)
    outputs = fields.Integer(
        allow_none=True,
        metadata={"description": "columns of a multi-output/multilabel model; null for one"},
    )
    input = fields.String(
        metadata={"enum": ["array", "frame"], "description": "what the model is fed"}
    )
    runtime = fields.String(
        metadata={
            "enum": ["sklearn", "numpy-linear", "onnxruntime"],
            "description": "what answers: the estimator, a verified numpy kernel, ONNX Runtime",
        }
    )


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelSummarySchema), required=True)


class VersionMetadataSchema(Schema):
    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)
    version = fields.Integer(required=True)
    sha256 = fields.String(required=True)
    task = fields.String(required=True)
    n_features = fields.Integer(required=True)
    feature_names = fields.List(fields.String(), allow_none=True)
    model_feature_names = fields.List(
        fields.String(),
        allow_none=True,
        metadata={
            "description": "the columns the model is fed, when the library renamed the "
            "feature names at fit (LightGBM: `mean radius` -> `mean_radius`); null otherwise"
        },
    )
    classes = fields.List(fields.Raw(), allow_none=True)
    outputs = fields.Integer(
        allow_none=True,
        metadata={"description": "columns of a multi-output/multilabel model; null for one"},
    )
    sklearn_version = fields.String(required=True)
    created_at = fields.String(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    waiting = fields.Dict(keys=fields.String(), values=fields.String())
    reason = fields.String()  # "draining": SIGTERM received (serving.api.drain)
    fallback = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "model:alias served by an older version: the deployed one "
                  "failed to load in this worker (others may serve it)"},
    )  # fmt: skip


# -- the admin API: request bodies (strict) and answers -----------------------------------


class Weight(fields.Float):
    """A JSON number, not a string or a boolean; the store refuses negatives and all zeros."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if type(value) not in (int, float):
            raise ValidationError("Must be a number.")
        return float(value)


def _alias_field() -> fields.String:
    return fields.String(
        load_default=DEFAULT_ALIAS,
        validate=validate.Regexp(NAME_RE, error="Not a valid alias name."),
        metadata={"description": f"the alias to change (default: {DEFAULT_ALIAS})"},
    )


def _version_field(**kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(min=1), **kwargs)


class PromoteRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    version = _version_field(required=True)
    alias = _alias_field()


class AliasRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    version = _version_field(required=True)


class RollbackRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    alias = _alias_field()


class RouteRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    alias = _alias_field()
    weights = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[1-9][0-9]{0,8}$", error="Not a version.")),
        values=Weight(),
        required=True,
        metadata={"description": "version -> weight, e.g. 90/10", "example": {"3": 90, "4": 10}},
    )
    sticky = StrictBoolean(
        load_default=False,
        metadata={"description": "same routing key (X-Routing-Key), same variant"},
    )

    @post_load
    def _versions_as_numbers(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["weights"] = {int(version): weight for version, weight in data["weights"].items()}
        return data


class ShadowRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    alias = _alias_field()
    version = _version_field(
        required=True, allow_none=True, metadata={"description": "null stops the shadow"}
    )


class HistoryQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))


class AdminChangeSchema(Schema):
    model = fields.String(required=True)
    action = fields.String(
        required=True, metadata={"enum": ["promote", "rollback", "route", "shadow"]}
    )
    alias = fields.String(required=True)
    previous = fields.Integer(
        allow_none=True, metadata={"description": "the version (or shadow) before the change"}
    )
    version = fields.Integer(
        allow_none=True, metadata={"description": "the version (or shadow) after the change"}
    )
    route = fields.Dict(metadata={"description": "the split written (route only)"})
    deployment = fields.Dict(required=True, metadata={"description": "deployment.json after"})


class HistorySchema(Schema):
    model = fields.String(required=True)
    events = fields.List(fields.Dict(), required=True)
