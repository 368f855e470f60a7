"""Errors leave in each protocol's own shape, never with internals.

/v1: `{"error": {"code", "message", "details"?}}`; /v2: `{"error": "..."}`;
MLflow scoring: `{"error_code", "message"}`.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import errors
from serving.api import mlflow, v2
from serving.api.jsonio import json_response

log = logging.getLogger("serving.errors")

_BY_STATUS: dict[int, type[errors.ServingError]] = {
    400: errors.MalformedRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def register(app: Flask) -> None:
    app.register_error_handler(errors.ServingError, _serving_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _serving_error(exc: errors.ServingError) -> Response:
    if mlflow.owns(request.path):  # the MLflow scoring protocol has its own error shape
        return mlflow.error_response(exc.status_code, exc.message)
    if v2.owns(request.path):  # so has the Open Inference Protocol: {"error": "..."}
        return v2.error_response(exc.status_code, exc.message)
    return json_response(exc.to_dict(), exc.status_code)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    cls = _BY_STATUS.get(status)
    if status == 404:
        message = f"no route for {request.method} {request.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif status == 413:
        limit = request.max_content_length
        message = f"request body too large: the limit is {limit} bytes"
    else:
        message = exc.description or exc.name
    body = {
        "error": {
            "code": cls.code if cls else exc.name.lower().replace(" ", "_"),
            "message": message,
        }
    }
    response = json_response(body, status)
    if mlflow.owns(request.path):
        response = mlflow.error_response(status, message)
    if v2.owns(request.path):
        response = v2.error_response(status, message)
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def _unexpected(exc: Exception) -> Response:
    request_id = g.get("request_id")
    log.exception("unhandled error", extra={"request_id": request_id})
    body = {
        "error": {
            "code": "internal_error",
            "message": f"internal error; the server log has details under request id {request_id}",
        }
    }
    if mlflow.owns(request.path):
        return mlflow.error_response(500, body["error"]["message"])
    if v2.owns(request.path):
        return v2.error_response(500, body["error"]["message"])
    return json_response(body, 500)
