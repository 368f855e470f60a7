"""JSON in and out: strict content type, bounded body, fast orjson with a precise fallback."""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Request, Response
from marshmallow import Schema, ValidationError

from serving.errors import InvalidInput, MalformedRequest, PayloadTooLarge, UnsupportedMediaType
from serving.protocols.strict_json import check_no_duplicate_keys, loads_lenient

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_JSON_TYPES = ("application/json",)


def read_json(request: Request) -> tuple[Any, bool]:
    """Parse the body as JSON. Returns (payload, may_have_bools).

    `may_have_bools` is False when the body holds no more `true`/`false` tokens than the
    top-level fields account for, which lets numeric validation skip a per-value scan.
    NaN/Infinity (not JSON) are let through as floats so validation can name their row.
    """
    mimetype = request.mimetype
    if mimetype and mimetype not in _JSON_TYPES and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not supported: send application/json",
            {"content_type": mimetype},
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset {charset!r} is not supported: send utf-8")
    body = _read_body(request)
    if not body.strip():
        raise MalformedRequest("the request body is empty: send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = loads_lenient(body)
    check_no_duplicate_keys(body, payload)  # a repeated key is refused, never resolved
    tokens = body.count(b"true") + body.count(b"false")
    top_level = sum(type(v) is bool for v in payload.values()) if type(payload) is dict else 0
    return payload, tokens > top_level


def _read_body(request: Request) -> bytes:
    """The whole body, or PayloadTooLarge: a chunked body past the limit is refused, not cut.

    With a Content-Length, werkzeug refuses an oversized body before reading it. Without one
    (chunked), werkzeug's limited stream stops quietly at the limit, so read one byte past it.
    """
    limit = request.max_content_length
    if request.content_length is not None or limit is None:
        return request.get_data(cache=False)
    if "wsgi.input_terminated" not in request.environ:  # the server cannot end the stream
        return request.get_data(cache=False)
    stream = request.environ["wsgi.input"]
    chunks, size = [], 0
    while chunk := stream.read(min(1 << 16, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body too large: the limit is {limit} bytes")
    return b"".join(chunks)


def load_query(schema: Schema, request: Request) -> dict[str, Any]:
    """The query string through `schema`, or InvalidInput (a 422) naming each bad parameter."""
    try:
        return schema.load(request.args.to_dict())  # type: ignore[no-any-return]
    except ValidationError as err:
        raise InvalidInput("bad query parameters", err.messages_dict) from None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    try:
        data = orjson.dumps(body, option=_DUMP_OPTIONS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (a pinned version in a URL)
        data = json.dumps(body, default=str, allow_nan=False).encode()
    response = Response(data, status=status, headers=headers)
    response.mimetype = "application/json"
    return response
