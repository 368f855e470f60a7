"""gunicorn's gevent worker with our JSON errors: a stalled client costs a greenlet, not a worker.

Its own module because importing it imports gevent (it monkey-patches only when a worker
starts, in `init_process`); the sync and gthread classes do not need gevent installed.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from serving.api.workers import JsonErrors

log = logging.getLogger("serving.http")

# A declared body must have arrived this many seconds after its headers, or the request is
# answered 408 and its greenlet freed. Bodies are at most SERVING_MAX_BODY_BYTES (a few MiB):
# 30 s is 100 KiB/s for 3 MiB, a slow mobile link. A total deadline, not one per read, so a
# client trickling a byte at a time cannot hold a connection forever (10-120).
BODY_TIMEOUT = 30.0
# After each response a greenlet sleeps this long, so the hub polls for I/O before it serves
# that connection's next request: `sleep(0)` would only queue it behind the callbacks already
# due, ahead of every connection whose data has arrived since (measured: p99 of 340 ms at 32
# connections with sleep(0), 54 ms with this).
NEXT_TURN = 1e-6

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class BodyDeadline:
    """WSGI middleware: read the request body (up to the app's limit + 1 byte) within
    `seconds`, then run the app on the bytes received; a body still missing then is 408.

    A body over the limit is not read (Content-Length) or read only to the limit + 1 (chunked):
    the app answers 413 as before. The app sees the same bytes it would have read itself.
    """

    def __init__(self, app: WSGIApp, limit: int | None, seconds: float = BODY_TIMEOUT) -> None:
        self.app, self.limit, self.seconds = app, limit, seconds

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        wanted = self._wanted(environ)
        if wanted:
            body, complete = self._read(environ["wsgi.input"], wanted)
            if not complete:
                log.warning(
                    "request body not received within %s s: %d bytes read",
                    self.seconds,
                    len(body),
                    extra={"path": environ.get("PATH_INFO"), "status": 408},
                )
                return _request_timeout(start_response, self.seconds)
            environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)

    def _wanted(self, environ: Environ) -> int:
        """How many bytes to read ahead: 0 for none (no body, or one the app refuses unread)."""
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                size = int(length)
            except ValueError:
                return 0
            return size if self.limit is None or size <= self.limit else 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        return self.limit + 1 if chunked and self.limit is not None else 0

    def _read(self, stream: Any, wanted: int) -> tuple[bytes, bool]:
        """(what arrived, whether the stream ended or gave `wanted` bytes before the deadline)."""
        chunks: list[bytes] = []
        size, complete = 0, False
        with gevent.Timeout(self.seconds, False):
            while size < wanted:
                chunk = stream.read(min(1 << 16, wanted - size))
                if not chunk:  # the end of the body, or a client that left (the app sees it)
                    break
                chunks.append(chunk)
                size += len(chunk)
            complete = True
        return b"".join(chunks), complete


def _request_timeout(start_response: StartResponse, seconds: float) -> list[bytes]:
    message = f"the request body did not arrive within {seconds:g} s"
    body = json.dumps({"error": {"code": "request_timeout", "message": message}}).encode()
    start_response(
        "408 Request Timeout",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class GeventWorker(JsonErrors, _GeventWorker):
    """Each connection is a greenlet: a client that stalls mid-headers or mid-body waits
    without holding the process, while the others are served. Headers must arrive within
    `keepalive` seconds (gunicorn's gevent worker times the header read with it), a body
    within BODY_TIMEOUT."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi
        if hasattr(app, "wsgi_app"):  # Flask's place for middleware: the app stays the app
            app.wsgi_app = BodyDeadline(app.wsgi_app, app.config.get("MAX_CONTENT_LENGTH"))

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        """Serve one request, then let every other ready connection go first. A kept-alive
        client's next request is often already there, so its greenlet would read and serve it
        without ever switching: one connection served back to back, the rest waiting (p99 of
        1.9 s at 32 connections, measured). A timer (NEXT_TURN), not `sleep(0)`: only a timer
        lets the hub poll the other sockets first."""
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            gevent.sleep(NEXT_TURN)
