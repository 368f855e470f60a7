"""Exposed to the internet: slow clients do not starve the workers, and gunicorn's own error
answers (request line too long, too many or too large headers, smuggling attempts) are JSON in
our shape, on every worker class gunicorn.conf.py offers."""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    IRIS_ROW,
    GunicornServer,
    predict,
    raw_request,
    server_env,
    statsd_listener,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STALLED = 50
PROBES = 120  # predictions per phase, one connection each, as a sync-era client sends them
PARTIAL_HEADERS = b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: test\r\nX-Stalled: "
DECLARED_BODY = (
    b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: test\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
    b'{"instances": [[5'
)


@contextlib.contextmanager
def stalled(port: int, prefix: bytes, count: int = STALLED) -> Iterator[list[socket.socket]]:
    """`count` connections that sent `prefix` and then nothing, closed on exit."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(prefix)
            socks.append(sock)
        time.sleep(0.5)  # let the workers accept them before the probes start
        yield socks
    finally:
        for sock in socks:
            sock.close()


def p99_of_predictions(port: int) -> float:
    """Seconds; every prediction must be answered 200 (each has a 10 s timeout)."""
    durations = []
    for _ in range(PROBES):
        started = time.perf_counter()
        reply = predict(port, [IRIS_ROW], timeout=10)
        durations.append(time.perf_counter() - started)
        assert reply.status == 200, reply.raw
    durations.sort()
    return durations[int(0.99 * (len(durations) - 1))]


def test_fifty_stalled_connections_leave_predictions_answered_on_the_default_workers(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    with statsd_listener() as statsd:
        server = start_server(server_env(copy_store(), statsd.port, 2))
        calm = p99_of_predictions(server.port)
        # Generous (a shared, noisy machine): a starved server answers after gunicorn's 60 s
        # timeout or not at all, far beyond this.
        bound = 5 * calm + 0.5
        with stalled(server.port, PARTIAL_HEADERS):
            headers = p99_of_predictions(server.port)
        with stalled(server.port, DECLARED_BODY):
            bodies = p99_of_predictions(server.port)
        assert headers <= bound, (calm, headers)
        assert bodies <= bound, (calm, bodies)


def test_a_client_stalled_mid_headers_is_dropped_after_keepalive_seconds(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    with statsd_listener() as statsd:
        extra = {"GUNICORN_KEEPALIVE": "1"}
        server = start_server(server_env(copy_store(), statsd.port, 1, extra))
        with stalled(server.port, PARTIAL_HEADERS, count=1) as (sock,):
            sock.settimeout(10)
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server, nothing sent
            assert time.monotonic() - started < 5


# -- gunicorn's own answers ----------------------------------------------------------------------

PREDICT = b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: test\r\n"
BAD_REQUESTS = [
    pytest.param(
        b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
        414,
        "request_line_too_long",
        id="request-line-too-long",
    ),
    pytest.param(
        b"GET /health/live HTTP/1.1\r\n"
        + b"".join(b"X-H%d: a\r\n" % i for i in range(60))
        + b"\r\n",
        431,
        "request_headers_too_large",
        id="too-many-headers",
    ),
    pytest.param(
        b"GET /health/live HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "request_headers_too_large",
        id="header-too-large",
    ),
    pytest.param(
        PREDICT + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "malformed_request",
        id="smuggling-content-length-and-transfer-encoding",
    ),
    pytest.param(
        PREDICT + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        400,
        "malformed_request",
        id="smuggling-two-content-lengths",
    ),
    pytest.param(
        PREDICT + b"Transfer-Encoding: bogus\r\n\r\n0\r\n\r\n",
        501,
        "unsupported_transfer_coding",
        id="unsupported-transfer-coding",
    ),
    pytest.param(
        PREDICT + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
        "malformed_request",
        id="smuggling-chunked-twice",
    ),
    pytest.param(b"NONSENSE\r\n\r\n", 400, "malformed_request", id="bad-request-line"),
    pytest.param(
        b"GET /health/live HTTP/1.1\r\nBad Header: x\r\n\r\n",
        400,
        "malformed_request",
        id="invalid-header-name",
    ),
]


@pytest.fixture(scope="module", params=["gevent", "sync", "gthread"])
def any_worker_server(
    request: pytest.FixtureRequest,
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
) -> Iterator[GunicornServer]:
    with statsd_listener() as statsd:
        extra = {"GUNICORN_WORKER_CLASS": request.param}
        if request.param == "gthread":
            extra["GUNICORN_THREADS"] = "2"
        server = start_server(server_env(copy_store(), statsd.port, 1, extra))
        yield server
        server.stop()


@pytest.mark.parametrize(("data", "status", "code"), BAD_REQUESTS)
def test_gunicorn_refusals_answer_json_in_our_error_shape(
    any_worker_server: GunicornServer, data: bytes, status: int, code: str
) -> None:
    reply = raw_request(any_worker_server.port, data)
    assert reply.status == status, reply.raw
    assert reply.headers["content-type"] == "application/json", reply.raw
    assert reply.headers["connection"] == "close"
    assert set(reply.body) == {"error"}, reply.raw
    assert reply.body["error"]["code"] == code
    assert isinstance(reply.body["error"]["message"], str) and reply.body["error"]["message"]
    assert b"<html>" not in reply.raw
    # the worker still serves afterwards
    assert predict(any_worker_server.port, [IRIS_ROW]).status == 200


# -- the body deadline, in process ---------------------------------------------------------------


class _StalledStream:
    """A wsgi.input that hands out `data`, then blocks (cooperatively) forever."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        if chunk:
            return chunk
        import gevent

        gevent.sleep(60)
        return b""


def _call(app: Callable, environ: dict) -> tuple[str, bytes]:
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return seen[0], body


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_a_complete_one_reaches_the_app() -> None:
    pytest.importorskip("gevent")
    from serving.api.gevent_worker import BodyDeadline

    received = []

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        received.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = BodyDeadline(app, limit=1000, seconds=0.2)
    started = time.monotonic()
    status, body = _call(
        wrapped, {"CONTENT_LENGTH": "100", "wsgi.input": _StalledStream(b'{"inst')}
    )
    assert status.startswith("408") and b'"code": "request_timeout"' in body
    assert time.monotonic() - started < 5 and received == []
    status, _ = _call(wrapped, {"CONTENT_LENGTH": "5", "wsgi.input": _StalledStream(b"hello")})
    assert status.startswith("200") and received == [b"hello"]
    # over the limit: not read ahead, the app refuses it (413) itself
    status, _ = _call(wrapped, {"CONTENT_LENGTH": "5000", "wsgi.input": _StalledStream(b"x")})
    assert status.startswith("200") and received[-1] == b"x"
