"""The ceiling: a bare WSGI app that reads the request body and answers a constant JSON body.

It does everything an HTTP server must do for a request (read the body, write a response) and
nothing else, so gunicorn with it measures what the server and the load generator cost alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b'{"model":"lr","version":1,"predictions":[1],"request_id":"0123456789abcdef"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", HEADERS)
    return [BODY]
