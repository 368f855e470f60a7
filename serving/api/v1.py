"""The native API (DESIGN §4): list and describe models, predict by alias or pinned version."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, g, request
from marshmallow import ValidationError

from serving import dataplane
from serving.api.jsonio import json_response, read_json
from serving.api.openapi import doc
from serving.api.operators import shows_operators, without_operators
from serving.api.schemas import (
    ErrorSchema,
    ModelDetailSchema,
    ModelListSchema,
    PredictRequestSchema,
    PredictResponseSchema,
    VersionMetadataSchema,
)
from serving.api.state import get_state
from serving.errors import DeploymentDamaged, InvalidInput, ModelNotFound
from serving.runtime.model import ModelState
from serving.store.model_store import DEFAULT_ALIAS

bp = Blueprint("v1", __name__, url_prefix="/v1")
_PREDICT_SCHEMA = PredictRequestSchema()
_PREDICT_ERRORS = {status: ErrorSchema for status in (400, 404, 413, 415, 422, 503, 504)}
_PREDICT_DOC = {200: PredictResponseSchema, **_PREDICT_ERRORS}


@bp.post("/models/<name>/predict")
@doc("Predict with the production alias", "v1", _PREDICT_DOC, PredictRequestSchema)
def predict_default(name: str) -> Response:
    return predict_alias(name, DEFAULT_ALIAS)


@bp.post("/models/<name>/aliases/<alias>/predict")
@doc("Predict through a named alias (staging, canary...)", "v1", _PREDICT_DOC, PredictRequestSchema)
def predict_alias(name: str, alias: str) -> Response:
    payload, may_have_bools = _load_envelope()
    key = request.headers.get("X-Routing-Key") or payload.get("routing_key")
    return _predict(payload, may_have_bools, name, alias=alias, key=key)


@bp.post("/models/<name>/versions/<int:version>/predict")
@doc("Predict with a pinned version", "v1", _PREDICT_DOC, PredictRequestSchema)
def predict_version(name: str, version: int) -> Response:
    payload, may_have_bools = _load_envelope()
    return _predict(payload, may_have_bools, name, version=version)


@bp.get("/models")
@doc("List models", "v1", {200: ModelListSchema, 503: ErrorSchema})
def list_models() -> Response:
    state = get_state()
    return json_response({"models": [_model_summary(name) for name in state.store.list_models()]})


@bp.get("/models/<name>")
@doc("Describe a model", "v1", {200: ModelDetailSchema, 404: ErrorSchema, 503: ErrorSchema})
def show_model(name: str) -> Response:
    if not get_state().store.exists(name):
        raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
    return json_response(_model_summary(name, detailed=True))


@bp.get("/models/<name>/versions/<int:version>")
@doc("A version's metadata", "v1", {200: VersionMetadataSchema, 404: ErrorSchema})
def show_version(name: str, version: int) -> Response:
    metadata = get_state().store.read_metadata(name, version)
    return json_response(metadata if shows_operators() else without_operators(metadata))


def _load_envelope() -> tuple[dict[str, Any], bool]:
    payload, may_have_bools = read_json(request)
    try:
        return _PREDICT_SCHEMA.load(payload), may_have_bools
    except ValidationError as err:
        raise InvalidInput("the request does not match the schema", err.messages_dict) from None


def _predict(
    payload: dict[str, Any],
    may_have_bools: bool,
    name: str,
    alias: str | None = None,
    version: int | None = None,
    key: str | None = None,
) -> Response:
    """Route (an alias's split and shadow, or a pinned version), predict, encode the body."""
    state = get_state()
    # The request hooks' one source, set before predicting: a refused input still counts.
    g.outcome = outcome = dataplane.route(state.loader, name, alias, version, key)
    rows = dataplane.Rows(instances=payload["instances"], may_have_bools=may_have_bools)
    max_instances = state.settings.max_instances
    timeout = state.settings.request_timeout
    proba, scores = payload["return_proba"], payload["return_scores"]
    result = dataplane.infer(outcome, rows, proba, max_instances, timeout, scores)
    body = result.body()
    body["request_id"] = g.request_id
    variant = outcome.variant
    if variant is not None:
        body["variant"] = variant
    return json_response(body, headers={"X-Model-Variant": variant} if variant else None)


def _model_summary(name: str, detailed: bool = False) -> dict[str, Any]:
    state = get_state()
    live = state.loader.states().get(name)
    deployment = _deployment(name, live)
    serving = {alias: m.version for alias, m in live.serving.items()} if live else {}
    out: dict[str, Any] = {
        "name": name,
        "versions": state.store.versions(name),
        "aliases": deployment["aliases"],
        "serving": serving,
    }
    if detailed:
        out["routes"] = deployment.get("routes") or {}
        out["shadows"] = deployment.get("shadows") or {}
        out["problems"] = dict(live.problems) if live else {}
        out["worker"] = {"pid": os.getpid(), **_live_routing(live)}
        out["log"] = state.recorder.status()
        loaded = None
        if live:
            loaded = live.serving.get("production") or next(iter(live.serving.values()), None)
        if loaded is not None:
            out["task"] = loaded.task
            out["features"] = loaded.schema.describe()
            out["classes"] = loaded.classes
            out["outputs"] = loaded.outputs
            out["input"] = "frame" if loaded.schema.frame else "array"
            out["runtime"] = loaded.runtime
    return out


def _deployment(name: str, live: ModelState | None) -> dict[str, Any]:
    """The store's deployment; a damaged one: the last good one this worker serves instead
    (its problems say why), or a 503 in our error shape when the worker has none."""
    try:
        return get_state().store.read_deployment(name)
    except DeploymentDamaged:
        if live is None or not live.wanted:
            raise
        return {
            "aliases": dict(live.wanted),
            "shadows": {alias: m.version for alias, m in live.shadows.items()},
        }


def _live_routing(live: ModelState | None) -> dict[str, Any]:
    """The splits and shadows this worker applies now (it converges on deployment.json)."""
    routes: dict[str, Any] = {}
    for alias, route in (live.routes if live else {}).items():
        shares = [b - a for a, b in zip((0.0, *route.cumulative), route.cumulative)]
        routes[alias] = {
            "variants": [
                {"version": v, "share": round(share, 6)} for v, share in zip(route.versions, shares)
            ],
            "sticky": route.sticky,
            "experiment": route.experiment,
        }
    shadows = {alias: m.version for alias, m in live.shadows.items()} if live else {}
    return {"routes": routes, "shadows": shadows}
