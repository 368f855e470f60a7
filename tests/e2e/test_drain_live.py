"""SIGTERM under load: readiness turns 503 "draining" while predictions still answer, then the
graceful stop answers every connection it accepted (none is reset).

Clients open a new connection per request and classify each: answered (with its status),
refused (the connect failed: the server had closed its socket, which is how a stopped server
says no), or reset (the connect succeeded, so the kernel had queued it, and no answer came).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    IRIS_ROW,
    GunicornServer,
    http_request,
    predict,
    server_env,
    statsd_listener,
    wait_until,
)

pytestmark = pytest.mark.e2e

CLIENTS = 6
DRAIN = 2.0
_REQUEST = (
    "POST /v1/models/iris/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}"
)


class Load:
    """CLIENTS threads, each a new connection per request, until the server refuses them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join(timeout=30)

    def _client(self) -> None:
        body = json.dumps({"instances": [IRIS_ROW]})
        request = _REQUEST.format(len(body), body).encode()
        refused = 0
        while refused < 3:  # a few in a row: the server is gone
            outcome = self._one(request)
            refused = refused + 1 if outcome == "refused" else 0
            with self.lock:
                self.outcomes[outcome] += 1

    def _one(self, request: bytes) -> str:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.05)
            return "refused"
        try:
            with sock:
                sock.sendall(request)
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        if not raw.startswith(b"HTTP/1.1 "):
            return "reset"  # closed without a word
        return raw.split(b" ", 2)[1].decode()


@pytest.mark.parametrize("worker_class", ["gevent", "sync", "gthread"])
def test_sigterm_drains_then_answers_every_accepted_connection(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    worker_class: str,
) -> None:
    extra = {
        "GUNICORN_WORKER_CLASS": worker_class,
        "SERVING_DRAIN_SECONDS": str(DRAIN),
        "GUNICORN_GRACEFUL_TIMEOUT": "5",
    }
    with statsd_listener() as statsd:
        server = start_server(server_env(copy_store(), statsd.port, 2, extra))
        port = server.port
        with Load(port) as load:
            time.sleep(0.5)
            sent = time.monotonic()
            server.signal(signal.SIGTERM)
            ready = wait_until(
                lambda: (r := http_request(port, "GET", "/health/ready")).status == 503 and r,
                DRAIN,
                "readiness to say draining",
            )
            during = predict(port, [IRIS_ROW])
            drained_for = time.monotonic() - sent
            assert server.wait(timeout=15) == 0
            stopped = time.monotonic() - sent
        outcomes = dict(load.outcomes)

    print(f"\n{worker_class}: {outcomes} (drain {DRAIN} s; exited {stopped:.2f} s after SIGTERM)")
    assert ready.body == {"status": "not_ready", "reason": "draining"}
    assert during.status == 200, during.raw
    assert drained_for < DRAIN
    assert stopped >= DRAIN
    assert outcomes.get("reset", 0) == 0, outcomes
    assert set(outcomes) <= {"200", "refused"}, outcomes
    assert outcomes.get("200", 0) > 0
