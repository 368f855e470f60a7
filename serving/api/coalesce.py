"""One `send` per response: the status line and headers go out with the body.

gunicorn's HTTP/1 response writes its headers with one `sendall` and then the body with
another: two system calls per response, each of which on loopback or a LAN runs the receiving
side's TCP path too (py-spy on a worker under wrk: 29% of its time in `send`, half of it for the
headers). When the first body write comes, `CoalescedResponse` sends the held headers and that
body in one call. Chunked responses, files (`sendfile`) and responses without a body write as
gunicorn does; the bytes on the wire are the same.

Installed per worker process (`install`, from the worker's `init_process`): gunicorn's
`wsgi.create` builds `gunicorn.http.wsgi.Response` for every HTTP/1 request.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import wsgi


class _Held:
    """A stand-in socket that keeps what gunicorn's `send_headers` writes."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class CoalescedResponse(wsgi.Response):  # type: ignore[misc]
    _holding = False
    _held = b""

    def write(self, arg: bytes) -> None:
        if self.headers_sent or self.chunked:
            super().write(arg)
            return
        self._holding = True
        try:
            super().write(arg)  # send_headers (held), then _emit_body (with them)
        finally:
            self._holding = False
            self._flush()  # a body that was omitted or cut to nothing: the headers alone

    def send_headers(self) -> None:
        if not self._holding or self.headers_sent:
            super().send_headers()
            return
        held, sock = _Held(), self.sock
        self.sock = held
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._held = held.data

    def _emit_body(self, data: bytes) -> None:
        held, self._held = self._held, b""
        if held:
            self.sock.sendall(held + data)
        else:
            super()._emit_body(data)

    def _flush(self) -> None:
        held, self._held = self._held, b""
        if held:
            self.sock.sendall(held)


def install(module: Any = wsgi) -> None:
    """Make gunicorn build CoalescedResponse for HTTP/1 requests in this process."""
    module.Response = CoalescedResponse
