"""The admin API (`/v1/admin/...`): promote, roll back, split, shadow and audit over HTTP.

Registered only when `SERVING_ADMIN_TOKEN` is set. Every change is a store write (model lock,
atomic `deployment.json`, a line in `history.jsonl`), never a change to this worker's memory:
each worker's poller converges on it, as it does for the CLI.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, request
from marshmallow import Schema, ValidationError

from serving.api.jsonio import json_response, read_json
from serving.api.openapi import doc
from serving.api.schemas import (
    AdminChangeSchema,
    AliasRequestSchema,
    ErrorSchema,
    HistoryQuerySchema,
    HistorySchema,
    PromoteRequestSchema,
    RollbackRequestSchema,
    RouteRequestSchema,
    ShadowRequestSchema,
)
from serving.api.state import get_state
from serving.errors import Forbidden, InvalidInput, ModelNotFound, Unauthorized

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
_SECURITY = [{"bearer": []}]
_ERRORS = {status: ErrorSchema for status in (400, 401, 403, 404, 415, 422, 503)}
_CHANGE = {200: AdminChangeSchema, **_ERRORS}


@bp.before_request
def _authorize() -> None:
    """`Authorization: Bearer <token>`, compared in constant time: 401 without, 403 wrong."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the admin token as 'Authorization: Bearer <token>'")
    expected = get_state().settings.admin_token or ""
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Forbidden("the bearer token is not the admin token")


@bp.after_request
def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="serving admin"'
    return response


@bp.post("/models/<name>/promote")
@doc("Point an alias at a version", "admin", _CHANGE, PromoteRequestSchema, security=_SECURITY)
def promote(name: str) -> Response:
    body = _load(PromoteRequestSchema(), name)
    before = get_state().store.promote(name, body["version"], body["alias"], actor=_actor())
    return _changed(name, "promote", body["alias"], before, body["version"])


@bp.post("/models/<name>/aliases/<alias>")
@doc("Point a named alias at a version", "admin", _CHANGE, AliasRequestSchema, security=_SECURITY)
def set_alias(name: str, alias: str) -> Response:
    body = _load(AliasRequestSchema(), name)
    before = get_state().store.promote(name, body["version"], alias, actor=_actor())
    return _changed(name, "promote", alias, before, body["version"])


@bp.post("/models/<name>/rollback")
@doc(
    "Point an alias back to its previous version (a split alias: to its version before the split)",
    "admin",
    _CHANGE,
    RollbackRequestSchema,
    security=_SECURITY,
)
def rollback(name: str) -> Response:
    body = _load(RollbackRequestSchema(), name, optional=True)
    store = get_state().store
    before = store.read_deployment(name)["aliases"].get(body["alias"])
    target = store.rollback(name, body["alias"], actor=_actor())
    return _changed(name, "rollback", body["alias"], before, target)


@bp.post("/models/<name>/route")
@doc(
    "Split an alias between versions by weight",
    "admin",
    _CHANGE,
    RouteRequestSchema,
    security=_SECURITY,
)
def route(name: str) -> Response:
    body = _load(RouteRequestSchema(), name)
    store = get_state().store
    before = store.read_deployment(name)["aliases"].get(body["alias"])
    doc_ = store.route(name, body["weights"], body["alias"], body["sticky"], actor=_actor())
    after = store.read_deployment(name)["aliases"].get(body["alias"])
    return _changed(name, "route", body["alias"], before, after, route=doc_)


@bp.post("/models/<name>/shadow")
@doc(
    "Mirror an alias's traffic to a version (null: stop)",
    "admin",
    _CHANGE,
    ShadowRequestSchema,
    security=_SECURITY,
)
def shadow(name: str) -> Response:
    body = _load(ShadowRequestSchema(), name)
    before = get_state().store.shadow(name, body["version"], body["alias"], actor=_actor())
    return _changed(name, "shadow", body["alias"], before, body["version"])


@bp.get("/models/<name>/history")
@doc(
    "The latest events of history.jsonl, oldest first",
    "admin",
    {200: HistorySchema, **{status: ErrorSchema for status in (401, 403, 404, 422)}},
    security=_SECURITY,
    query=HistoryQuerySchema,
)
def history(name: str) -> Response:
    _require_model(name)
    query = _validated(HistoryQuerySchema(), request.args.to_dict())
    events = get_state().store.history(name)[-query["limit"] :]
    return json_response({"model": name, "events": events})


def _load(schema: Schema, name: str, optional: bool = False) -> dict[str, Any]:
    """The validated JSON body; with `optional`, no body at all means `{}`."""
    _require_model(name)
    empty = not request.content_length and "Transfer-Encoding" not in request.headers
    payload = {} if optional and empty else read_json(request)[0]
    return _validated(schema, payload)


def _validated(schema: Schema, payload: Any) -> dict[str, Any]:
    try:
        return schema.load(payload)  # type: ignore[no-any-return]
    except ValidationError as err:
        raise InvalidInput("the request does not match the schema", err.messages_dict) from None


def _require_model(name: str) -> None:
    if not get_state().store.exists(name):
        raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})


def _actor() -> str:
    return f"admin-api@{request.remote_addr or 'unknown'}"


def _changed(
    name: str, action: str, alias: str, previous: int | None, version: int | None, **extra: Any
) -> Response:
    body = {
        "model": name,
        "action": action,
        "alias": alias,
        "previous": previous,
        "version": version,
        **extra,
        "deployment": get_state().store.read_deployment(name),
    }
    return json_response(body)
