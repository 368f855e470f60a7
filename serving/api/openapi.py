"""OpenAPI 3 generated from the marshmallow schemas of each route, and a self-hosted docs page.

A view declares its contract with `@doc(...)`; `build_spec` walks the app's URL map, so a new
route shows up in `/openapi.json` as soon as it is decorated (a test fails for one that is not).
Swagger UI's files come from the `swagger-ui-bundle` package: no CDN, works offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, send_from_directory
from marshmallow import Schema
from swagger_ui_bundle import swagger_ui_path

from serving.api import schemas
from serving.api.jsonio import json_response
from serving.store.model_store import NAME_RE

VERSION = "0.1.0"
bp = Blueprint("openapi", __name__)
_ATTR = "__openapi__"
_CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")
_PARAM_TYPES = {"int": {"type": "integer", "minimum": 0}}
_PARAM_NAMES = {"name": {"type": "string", "pattern": NAME_RE.pattern}}
_STATUS_TEXT = {
    200: "OK",
    400: "Malformed request",
    401: "Missing or malformed bearer token",
    403: "Wrong bearer token",
    404: "Unknown model, version or route",
    405: "Method not allowed",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Input does not match the schema",
    503: "Not ready, or no loadable version",
}
_UI_FILES = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}


def doc(
    summary: str,
    tag: str,
    responses: dict[int, type[Schema] | dict[str, Any] | None],
    body: type[Schema] | dict[str, Any] | None = None,
    body_types: tuple[str, ...] = ("application/json",),
    response_type: str = "application/json",
    security: list[dict[str, list[str]]] | None = None,
    query: type[Schema] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach an OpenAPI operation to a view; schemas are marshmallow classes (or raw dicts).

    `security` names schemes of `build_spec` (e.g. `[{"bearer": []}]`); `query` is a schema
    whose fields are the query parameters.
    """

    def attach(view: Callable[..., Any]) -> Callable[..., Any]:
        meta = (summary, tag, responses, body, body_types, response_type, security, query)
        setattr(view, _ATTR, meta)
        return view

    return attach


def build_spec(app: Flask) -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="serving",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={
            "description": "scikit-learn models over REST: native /v1, Open Inference "
            "Protocol /v2, MLflow-compatible /invocations."
        },
    )
    plugin.map_to_openapi_type(schemas.StrictBoolean, "boolean", None)
    plugin.map_to_openapi_type(schemas.Instances, "array", None)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, _ATTR, None)
        if meta is None:
            continue
        path, parameters = _path_and_parameters(rule.rule)
        operations = {}
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(rule.endpoint, meta, parameters)
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def documented_rules(app: Flask) -> tuple[list[str], list[str]]:
    """(documented, undocumented) rules, for the test that keeps the spec complete."""
    done, missing = [], []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        has = hasattr(app.view_functions.get(rule.endpoint), _ATTR)
        (done if has else missing).append(rule.rule)
    return done, missing


def _path_and_parameters(rule: str) -> tuple[str, list[dict[str, Any]]]:
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _PARAM_TYPES.get(conv) or _PARAM_NAMES.get(name, {"type": "string"}),
        }
        for conv, name in _CONVERTER.findall(rule)
    ]
    return _CONVERTER.sub(r"{\2}", rule), parameters


def _operation(endpoint: str, meta: tuple[Any, ...], parameters: list[Any]) -> dict[str, Any]:
    summary, tag, responses, body, body_types, response_type, security, query = meta
    op: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "summary": summary,
        "tags": [tag],
        "responses": {},
    }
    if query is not None:
        parameters = [*parameters, {"in": "query", "schema": query}]
    if parameters:
        op["parameters"] = parameters
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = {"required": True, "content": {t: {"schema": body} for t in body_types}}
    for status, schema in responses.items():
        response: dict[str, Any] = {"description": _STATUS_TEXT.get(status, str(status))}
        if schema is not None:
            content_type = response_type if status < 400 else "application/json"
            response["content"] = {content_type: {"schema": schema}}
        op["responses"][str(status)] = response
    return op


@bp.get("/openapi.json")
@doc("This OpenAPI document", "docs", {200: {"type": "object"}})
def openapi_json() -> Response:
    cached = current_app.extensions.get("openapi")
    if cached is None:
        cached = current_app.extensions["openapi"] = build_spec(current_app)
    return json_response(cached)


@bp.get("/docs")
@doc(
    "Interactive API docs (Swagger UI, served locally)",
    "docs",
    {200: None},
    response_type="text/html",
)
def docs_page() -> Response:
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/static/<name>")
@doc(
    "Files of the docs page",
    "docs",
    {200: None, 404: schemas.ErrorSchema},
    response_type="application/octet-stream",
)
def docs_static(name: str) -> Response:
    if name not in _UI_FILES:
        return json_response({"error": {"code": "not_found", "message": "no such file"}}, 404)
    return send_from_directory(swagger_ui_path, name, max_age=86400)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>serving API</title>
<link rel="icon" href="/docs/static/favicon-32x32.png">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", deepLinking: true,
  tryItOutEnabled: true});
</script></body></html>
"""
