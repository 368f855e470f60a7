"""Response conformance: every JSON answer the API tests receive is checked against /openapi.json.

`ConformingClient` is the test client of every app the fixtures build: it looks up the
operation of each request in the app's own spec and validates the response body against the
schema documented for its status. A status the operation does not document, or a body that
breaks its schema, fails the test that made the request (schema drift cannot hide).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema_rs
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import HTTPException
from werkzeug.test import TestResponse

from serving.api.openapi import build_spec

# Answers no operation can document one by one: a route that does not exist, a method it does
# not take, and the generic shapes of 413/415/500 (checked against the error schema instead).
_GENERIC = {404, 405, 413, 415, 500, 503, 429}


class SchemaViolation(AssertionError):
    """A response the OpenAPI document does not allow."""


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` is JSON Schema's `"null"` among the types."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    # the keyword is a boolean; a property *named* nullable (a feature's flag) is a schema
    flag = out.pop("nullable") if isinstance(out.get("nullable"), bool) else False
    if flag:
        if "type" in out:
            kinds = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*kinds, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out or "allOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


class SpecChecker:
    """Validates (method, rule, status, body) against one app's OpenAPI document."""

    def __init__(self, app: Flask) -> None:
        self.spec = _nullable_to_json_schema(build_spec(app))
        self._validators: dict[tuple[str, str, str], Any] = {}

    def check(self, method: str, path: str, status: int, mimetype: str, body: bytes) -> None:
        operation = self.spec["paths"].get(path, {}).get(method.lower())
        if operation is None:
            return  # undocumented paths are caught by the completeness test of the spec
        documented = operation["responses"].get(str(status))
        if documented is None:
            if status in _GENERIC:
                return
            raise SchemaViolation(f"{method} {path} answered {status}, which it does not document")
        content = documented.get("content") or {}
        if mimetype != "application/json" or "application/json" not in content:
            return
        validator = self._validator(path, method, str(status))
        errors = [
            f"{e.instance_path}: {e.message}" for e in validator.iter_errors(json.loads(body))
        ]
        if errors:
            raise SchemaViolation(f"{method} {path} {status}: " + "; ".join(errors[:5]))

    def _validator(self, path: str, method: str, status: str) -> Any:
        key = (path, method, status)
        if key not in self._validators:
            schema = self.spec["paths"][path][method.lower()]["responses"][status]["content"]
            root = {
                "components": copy.deepcopy(self.spec.get("components", {})),
                **schema["application/json"]["schema"],
            }
            self._validators[key] = jsonschema_rs.Draft4Validator(root)
        return self._validators[key]


class ConformingClient(FlaskClient):
    """A Flask test client whose every response is checked against the app's OpenAPI."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        request = response.request
        rule = _rule_of(self.application, request.method, request.path)
        if rule is not None:
            checker = self.application.extensions.get("test-openapi-checker")
            if checker is None:
                checker = self.application.extensions["test-openapi-checker"] = SpecChecker(
                    self.application
                )
            path = _openapi_path(rule)
            checker.check(
                request.method,
                path,
                response.status_code,
                response.mimetype or "",
                response.get_data(),
            )
        return response


def _rule_of(app: Flask, method: str, path: str) -> str | None:
    adapter = app.url_map.bind("localhost")
    try:
        rule, _ = adapter.match(path, method=method, return_rule=True)
    except HTTPException:
        return None
    return str(rule.rule)


def _openapi_path(rule: str) -> str:
    import re

    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
