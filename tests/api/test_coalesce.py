"""One send per response (serving/api/coalesce.py): the status line and headers go out with
the first body write; the bytes are gunicorn's own. On a real socket pair, with gunicorn's
Response and a recording socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi

from serving.api.coalesce import CoalescedResponse


class _Request:
    version = (1, 1)
    method = "GET"

    def should_close(self) -> bool:
        return False


class _Recording:
    """A real socket whose `sendall` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.calls = sock, 0

    def sendall(self, data: bytes) -> None:
        self.calls += 1
        self.sock.sendall(data)


@pytest.fixture
def pair() -> Iterator[tuple[_Recording, socket.socket]]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(2)
    yield _Recording(ours), theirs
    ours.close()
    theirs.close()


def _respond(cls: type, sock: Any, status: str, headers: list, parts: list[bytes]) -> Any:
    response = cls(_Request(), sock, Config())
    response.start_response(status, headers)
    for part in parts:
        response.write(part)
    response.close()
    return response


def _received(theirs: socket.socket) -> bytes:
    data = b""
    theirs.setblocking(False)
    try:
        while chunk := theirs.recv(65536):
            data += chunk
    except BlockingIOError:
        pass
    return data


def _without_date(data: bytes) -> bytes:
    return b"".join(line for line in data.splitlines(True) if not line.startswith(b"Date:"))


# case: (status, headers, body writes, sendall calls ours, gunicorn's)
CASES = {
    "json body": ("200 OK", [("Content-Type", "application/json"), ("Content-Length", "7")],
                  [b'{"a":1}'], 1, 2),
    "two writes": ("200 OK", [("Content-Length", "6")], [b"abc", b"def"], 2, 3),
    "no body (204)": ("204 No Content", [], [b""], 1, 1),
}  # fmt: skip


@pytest.mark.parametrize("case", [*CASES, "chunked"])
def test_the_bytes_are_gunicorns_and_the_headers_travel_with_the_body(
    pair: tuple[_Recording, socket.socket], case: str
) -> None:
    status, headers, parts, ours_calls, their_calls = CASES.get(
        case, ("200 OK", [], [b"ab", b"c"], 0, 0)
    )
    ours, theirs = pair
    _respond(CoalescedResponse, ours, status, headers, parts)
    coalesced, calls = _received(theirs), ours.calls
    ours.calls = 0
    _respond(wsgi.Response, ours, status, headers, parts)
    assert _without_date(coalesced) == _without_date(_received(theirs))
    if case == "chunked":  # written as gunicorn writes it
        assert calls == ours.calls
    else:
        assert (calls, ours.calls) == (ours_calls, their_calls)
