"""The MLflow scoring protocol (`mlflow models serve`, SageMaker): a thin front door over the core.

`POST /invocations` scores the default model (`SERVING_DEFAULT_MODEL`, or the only deployed
model's production alias) through the same dataplane as /v1 (split, sticky `X-Routing-Key`,
shadow, validation, request log and metrics); answers are `{"predictions": [...]}` and errors
`{"error_code": "...", "message": "..."}`, like MLflow's.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from serving import dataplane
from serving.api.jsonio import _read_body, json_response, read_json
from serving.api.openapi import VERSION, doc
from serving.api.state import ServingState, get_state
from serving.errors import ModelNotFound, ServingError, UnsupportedMediaType
from serving.protocols import mlflow as mlflow_format
from serving.runtime.model import LoadedModel
from serving.store.model_store import DEFAULT_ALIAS

# Failures on these paths are rendered in MLflow's error shape (see api/errors.py).
PATHS = frozenset({"/invocations", "/ping", "/health", "/version"})
JSON, CSV = "application/json", "text/csv"
# MLflow's error codes for our statuses; any other 4xx is BAD_REQUEST, any other 5xx INTERNAL_ERROR.
_ERROR_CODES = {
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

bp = Blueprint("mlflow", __name__)
_ERROR = {
    "type": "object",
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error_code", "message"],
}
_BODY = {
    "description": "JSON with exactly one of dataframe_split, dataframe_records, instances, "
    "inputs (and optional params, ignored); or CSV with a header row naming the features"
}
_PREDICTIONS = {"type": "object", "properties": {"predictions": {"type": "array", "items": {}}}}


@bp.post("/invocations")
@doc(
    "MLflow scoring protocol: predict with the default model (SERVING_DEFAULT_MODEL)",
    "mlflow",
    {200: _PREDICTIONS, **{s: _ERROR for s in (400, 404, 413, 415, 503, 504)}},
    body=_BODY,
    body_types=(JSON, CSV),
)
def invocations() -> Response:
    mimetype = _content_type()
    state = get_state()
    g.outcome = outcome = _route_default(state, request.headers.get("X-Routing-Key"))
    loaded = outcome.served
    rows = _csv_rows(loaded) if mimetype == CSV else _json_rows(loaded)
    settings = state.settings
    result = dataplane.infer(
        outcome, rows, max_instances=settings.max_instances, timeout=settings.request_timeout
    )
    return json_response({"predictions": result.predictions})


@bp.get("/ping")
@bp.get("/health")
@doc(
    "MLflow/SageMaker health check: 200 when the default model can answer; with several "
    "models and no SERVING_DEFAULT_MODEL, 200 when every deployed model is ready",
    "mlflow",
    {200: None, 503: _ERROR},
)
def ping() -> Response:
    """200 when the default model can answer (what SageMaker and MLflow health checks ask).

    Several models and no SERVING_DEFAULT_MODEL: there is no default model, but the server is
    healthy when every deployed model is ready (`/health/ready`'s rule), so an orchestrator
    that health-checks the MLflow way still marks it up.
    """
    state = get_state()
    if state.settings.default_model is None and len(_deployed(state)) > 1:
        ready, waiting = state.loader.ready()
        if not ready:
            return error_response(503, f"not ready: {', '.join(sorted(waiting))}")
        return Response("\n", mimetype=JSON)
    try:
        default_model(state)
    except ServingError as exc:
        return error_response(503, exc.message)
    return Response("\n", mimetype=JSON)


@bp.get("/version")
@doc("The server version (text)", "mlflow", {200: {"type": "string"}}, response_type="text/plain")
def version() -> Response:
    return Response(VERSION, mimetype="text/plain")


def owns(path: str) -> bool:
    """True for the paths whose errors take MLflow's shape."""
    return path in PATHS


def error_response(status: int, message: str) -> Response:
    """MLflow's error body. Our 422 (input the model cannot take) is MLflow's 400 BAD_REQUEST."""
    status = 400 if status == 422 else status
    code = _ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
    return json_response({"error_code": code, "message": message}, status)


def default_model(state: ServingState) -> LoadedModel:
    """The model /invocations scores: SERVING_DEFAULT_MODEL, or the only deployed model."""
    return _route_default(state, None).served


def _route_default(state: ServingState, key: str | None) -> dataplane.Outcome:
    """The default model's production alias, through its split (sticky by `key`) and shadow."""
    name = state.settings.default_model
    if name is None:
        return dataplane.route(state.loader, _only_deployed(state), key=key)
    try:
        return dataplane.route(state.loader, name, key=key)
    except ModelNotFound as exc:
        raise ModelNotFound(f"SERVING_DEFAULT_MODEL={name!r}: {exc.message}", exc.details) from None


def _deployed(state: ServingState) -> list[str]:
    return sorted(n for n, s in state.loader.states().items() if DEFAULT_ALIAS in s.wanted)


def _only_deployed(state: ServingState) -> str:
    deployed = _deployed(state)
    if len(deployed) != 1:
        raise ModelNotFound(
            f"no default model: {len(deployed)} models are deployed "
            f"({', '.join(deployed) or 'none'}); set SERVING_DEFAULT_MODEL to the model "
            "/invocations should score"
        )
    return deployed[0]


def _content_type() -> str:
    """application/json or text/csv, with at most `charset=utf-8`; else 415, as MLflow does."""
    params = request.mimetype_params
    charset = params.get("charset", "utf-8").lower()
    if charset != "utf-8":
        raise UnsupportedMediaType(f"charset {charset!r}: the scoring server only supports utf-8")
    unexpected = sorted(set(params) - {"charset"})
    if unexpected:
        raise UnsupportedMediaType(
            f"unrecognized content type parameters: {', '.join(unexpected)} (MLflow 1.x "
            '`format=` parameters are gone: wrap the data in {"dataframe_split": ...})'
        )
    if request.mimetype not in (JSON, CSV):
        got = repr(request.content_type) if request.content_type else "none"
        raise UnsupportedMediaType(f"send Content-Type {JSON} or {CSV}; got {got}")
    return request.mimetype


def _json_rows(loaded: LoadedModel) -> dataplane.Rows:
    payload, may_have_bools = read_json(request)
    instances = mlflow_format.to_instances(mlflow_format.parse_json(payload), loaded.schema)
    return dataplane.Rows(instances=instances, may_have_bools=may_have_bools)


def _csv_rows(loaded: LoadedModel) -> dataplane.Rows:
    frame = mlflow_format.read_csv(_read_body(request), loaded.schema)
    if loaded.schema.numeric_only:
        return dataplane.Rows(array=mlflow_format.csv_matrix(frame, loaded.schema))
    return dataplane.Rows(instances=mlflow_format.csv_rows(frame))
