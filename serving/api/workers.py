"""gunicorn worker classes whose own answers (bad request line, headers too large, smuggling
attempts...) leave in our JSON error shape, not as gunicorn's HTML page.

gunicorn answers these itself, before the app sees a request: a client reading
`{"error": {"code", "message"}}` everywhere else must not get `<html>` here. gunicorn.conf.py
selects these classes (`GUNICORN_WORKER_CLASS`: sync, gthread; gevent in
`serving.api.gevent_worker`).
"""

from __future__ import annotations

import json
import time
from ssl import SSLError
from typing import Any

from gunicorn import util
from gunicorn.http.errors import (
    ConfigurationProblem,
    ExpectationFailed,
    ForbiddenProxyRequest,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    LimitRequestHeaders,
    LimitRequestLine,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
from gunicorn.workers.sync import SyncWorker as _SyncWorker

from serving.api import coalesce
from serving.api.drain import draining

# A message echoes what the client sent (a request line, a header name): at most this much.
_MESSAGE_CHARS = 200

# First match wins: (exception, status, reason phrase, our error code). A header the app tried
# to send is the app's fault (500); every other parse error is the client's (400 at least).
_ANSWERS: tuple[
    tuple[type[BaseException] | tuple[type[BaseException], ...], int, str, str], ...
] = (
    ((InvalidResponseHeader, InvalidResponseHeaderName), 500, "Internal Server Error", ""),
    (ConfigurationProblem, 500, "Internal Server Error", ""),
    (LimitRequestLine, 414, "URI Too Long", "request_line_too_long"),
    (LimitRequestHeaders, 431, "Request Header Fields Too Large", "request_headers_too_large"),
    (UnsupportedTransferCoding, 501, "Not Implemented", "unsupported_transfer_coding"),
    (ExpectationFailed, 417, "Expectation Failed", "expectation_failed"),
    ((ForbiddenProxyRequest, SSLError), 403, "Forbidden", "forbidden"),
    (ParseException, 400, "Bad Request", "malformed_request"),
)


def error_answer(exc: BaseException) -> tuple[int, str, dict[str, Any]]:
    """(status, reason phrase, JSON body) for an error gunicorn answers itself."""
    for kinds, status, reason, code in _ANSWERS:
        if isinstance(exc, kinds) and code:
            message = f"{reason.lower()}: {exc}"
            if len(message) > _MESSAGE_CHARS:
                message = message[: _MESSAGE_CHARS - 3] + "..."
            return status, reason, {"error": {"code": code, "message": message}}
        if isinstance(exc, kinds):
            break
    # A bug (ours or gunicorn's): no internals in the body, the traceback goes to the log.
    body = {"error": {"code": "internal_error", "message": "internal error; see the server log"}}
    return 500, "Internal Server Error", body


def error_response(exc: BaseException) -> bytes:
    """The whole HTTP/1.1 response, connection closed after it (gunicorn does the same)."""
    status, reason, body = error_answer(exc)
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("latin-1") + payload


class JsonErrors:
    """Mixin for a gunicorn worker: `handle_error` writes our JSON shape (same statuses and
    log lines as gunicorn's own, except that every parse error is a client error)."""

    log: Any

    def init_process(self) -> None:
        coalesce.install()  # one send per response: headers with the body
        super().init_process()  # type: ignore[misc]

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, _, _ = error_answer(exc)
        ip = (addr or ("", -1))[0]  # a unix socket has no address
        if status == 500:
            if req is not None and hasattr(req, "uri"):
                self.log.exception("Error handling request %s %s", req.method, req.uri)
            else:
                self.log.exception("Error handling request (no URI read)")
        else:
            self.log.warning("Invalid request from ip=%s: %s", ip, exc)
        try:
            util.write_nonblock(client, error_response(exc))
        except Exception:  # the client is gone: nothing to tell it
            self.log.debug("Failed to send error message.")


class SyncWorker(JsonErrors, _SyncWorker):
    """gunicorn's sync worker (one connection at a time) with our JSON errors; on a graceful
    exit it answers the connections already queued on its socket before it leaves."""

    def run(self) -> None:
        super().run()
        # SIGTERM of a stopping master (not a recycle or a HUP: the socket stays open for the
        # other workers then). A SIGQUIT exits in its handler and never gets here.
        if not self.alive and draining():
            self.drain_queue(time.monotonic() + self.cfg.graceful_timeout)

    def drain_queue(self, deadline: float) -> None:
        """Accept (non-blocking) and answer each connection waiting in the listen queue until
        it is empty or `deadline`: the kernel resets those left when the last copy of the
        listening socket closes. Another worker may take some; that is fine."""
        answered = 0
        for listener in self.sockets:
            while time.monotonic() < deadline:
                self.notify()
                try:
                    self.accept(listener)
                except (BlockingIOError, InterruptedError):
                    break  # EAGAIN: nothing queued any more
                except ConnectionAbortedError:
                    continue  # that client left while queued: the next one
                except OSError:
                    break  # the socket is gone
                answered += 1
        if answered:
            self.log.info("answered %d queued connections before exiting", answered)


class ThreadWorker(JsonErrors, _ThreadWorker):
    """gunicorn's gthread worker (a thread pool, keep-alive) with our JSON errors."""
