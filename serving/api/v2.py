"""Open Inference Protocol (KServe "V2", Triton clients): a thin front door over the dataplane.

Same routing (split, sticky `X-Routing-Key`, shadow), validation, request log and StatsD as /v1;
payloads are translated by `serving.protocols.v2`. Errors leave as `{"error": "..."}` (see
`serving.api.errors`).
"""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from serving import dataplane
from serving.api.jsonio import _read_body, json_response
from serving.api.openapi import VERSION, doc
from serving.api.state import get_state
from serving.errors import UnsupportedMediaType, VersionNotFound
from serving.protocols import v2 as v2codec
from serving.runtime.model import LoadedModel

bp = Blueprint("v2", __name__, url_prefix="/v2")
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON, BINARY = "application/json", "application/octet-stream"

# OpenAPI shapes of the protocol's responses (the request envelope is v2codec's schema).
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "example": "FP64"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array", "items": {}, "description": "row-major, flat or nested"},
        "parameters": {"type": "object", "example": {"binary_data_size": 32}},
    },
    "required": ["name", "datatype", "shape"],
}
_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string", "example": "sklearn"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "description": f"JSON; or, when an output asks for binary data, {BINARY}: this JSON "
    f"({HEADER_LENGTH} bytes) followed by the outputs' raw bytes",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_INDEX = {"type": "array", "items": {"type": "object", "example": {"state": "READY"}}}
_FAILURES = {400: _ERROR, 404: _ERROR, 503: _ERROR}


@bp.get("")
@doc("V2 server metadata: name, version, extensions", "v2", {200: {"type": "object"}})
def server_metadata() -> Response:
    return json_response(v2codec.server_metadata(VERSION))


@bp.get("/health/live")
@doc("V2 liveness", "v2", {200: {"type": "object", "example": {"live": True}}})
def live() -> Response:
    return json_response({"live": True})


@bp.get("/health/ready")
@doc("V2 readiness: every deployed model has a loaded version", "v2", {200: None, 503: _ERROR})
def ready() -> Response:
    ok, waiting = get_state().loader.ready()
    if ok:
        return json_response({"ready": True})
    reasons = "; ".join(f"{alias}: {reason}" for alias, reason in waiting.items())
    return json_response({"error": f"not ready: {reasons}"}, 503)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
@doc("V2 model metadata: input and output tensors", "v2", {200: _METADATA, **_FAILURES})
def model_metadata(name: str, version: str | None = None) -> Response:
    loaded = _model(name, version)
    return json_response(v2codec.model_metadata(loaded, _versions(name)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
@doc("V2 model readiness", "v2", {200: {"type": "object"}, **_FAILURES})
def model_ready(name: str, version: str | None = None) -> Response:
    loaded = _model(name, version)  # 404 unknown, 503 when no version can serve
    return json_response({"name": loaded.name, "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@doc(
    "V2 inference: one [N, n_features] tensor in (one per feature for a model with categorical "
    "or text features), predict / predict_proba / scores out",
    "v2",
    {200: _INFER_RESPONSE, **_FAILURES, 413: _ERROR, 415: _ERROR, 504: _ERROR},
    body=v2codec.InferRequestSchema,
    body_types=(JSON, BINARY),
)
def infer(name: str, version: str | None = None) -> Response:
    state = get_state()
    pinned, key = _pinned(name, version), request.headers.get("X-Routing-Key")
    g.outcome = outcome = dataplane.route(state.loader, name, version=pinned, key=key)
    infer_request = v2codec.parse_infer_request(_infer_body(), request.headers.get(HEADER_LENGTH))
    specs = v2codec.output_specs(outcome.served)
    v2codec.check_outputs(infer_request, specs)
    array, instances = v2codec.model_rows(infer_request, outcome.served.schema)
    rows = dataplane.Rows(instances=instances, array=array)
    proba, max_instances = infer_request.wants(v2codec.PROBA), state.settings.max_instances
    scores, timeout = infer_request.wants(v2codec.SCORES), state.settings.request_timeout
    result = dataplane.infer(outcome, rows, proba, max_instances, timeout, scores)
    body, header_length = v2codec.encode_infer_response(result, infer_request, specs)
    if header_length is None:
        return Response(body, mimetype=JSON)
    return Response(body, mimetype=BINARY, headers={HEADER_LENGTH: str(header_length)})


@bp.post("/repository/index")
@doc("V2 repository index (read-only): every stored version and its state", "v2", {200: _INDEX})
def repository_index() -> Response:
    ready_only = v2codec.parse_index_request(_read_body(request))
    state = get_state()
    versions = {name: state.store.versions(name) for name in state.store.list_models()}
    return json_response(v2codec.repository_index(versions, state.loader.states(), ready_only))


def owns(path: str) -> bool:
    """True for the paths whose errors take the V2 shape."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(status: int, message: str) -> Response:
    """V2's error body. Our 422 (input the model cannot take) is V2's 400, like any bad request."""
    return json_response({"error": message}, 400 if status == 422 else status)


def _model(name: str, version: str | None) -> LoadedModel:
    """The version an alias serves (production), or a pinned one: the same loader as /v1."""
    pinned = _pinned(name, version)
    if pinned is None:
        return get_state().loader.resolve(name)
    return get_state().loader.get_version(name, pinned)


def _pinned(name: str, version: str | None) -> int | None:
    """The version a V2 path pins (None: the production alias); integers only."""
    if version is None:
        return None
    if not (version.isascii() and version.isdigit()):
        raise VersionNotFound(f"model {name!r} has no version {version!r}: versions are integers")
    return int(version)


def _versions(name: str) -> list[int]:
    """The versions a client may pin: all stored ones, or only deployed ones without the cache."""
    state = get_state()
    if state.settings.pinned_cache_size:
        return state.store.versions(name)
    live = state.loader.states().get(name)
    return sorted(set(live.wanted.values())) if live else []


def _infer_body() -> bytes:
    """The raw body: JSON, or JSON + binary tensors. Triton clients send no Content-Type."""
    mimetype = request.mimetype
    if mimetype and mimetype not in (JSON, BINARY) and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not supported: send {JSON}, or {BINARY} "
            f"with an {HEADER_LENGTH} header"
        )
    if request.content_encoding not in (None, "", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {request.content_encoding!r} is not supported: send it uncompressed"
        )
    return _read_body(request)
