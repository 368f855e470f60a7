"""Slow clients on loopback: connections that send part of a request and then stall.

Two kinds, as an attacker (or a bad mobile link) would hold them:
- "headers": the request line and part of the headers, never the blank line that ends them;
- "body": complete headers declaring a 1 MiB body, a few bytes of it, then nothing.

A connection the server drops is opened again at once (a slowloris client reconnects), so the
server faces `count` stalled connections for the whole time; `reopened` counts the drops.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

HEADERS = b"POST /v1/models/lr/predict HTTP/1.1\r\nHost: bench\r\nX-Stalled: "
BODY = (
    b"POST /v1/models/lr/predict HTTP/1.1\r\nHost: bench\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
    b'{"instances": [[1'
)
_CHECK_EVERY = 0.2  # seconds between looks at which connections the server closed


class Stallers:
    """`count` stalled connections to 127.0.0.1:`port`, held from `start()` to `stop()`;
    bounded by `max_seconds` even if stop() is never called."""

    def __init__(self, port: int, kind: str, count: int = 50, max_seconds: float = 120.0) -> None:
        self.port, self.prefix, self.count = port, {"headers": HEADERS, "body": BODY}[kind], count
        self.max_seconds = max_seconds
        self.reopened = 0
        self.refused = 0
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="stallers", daemon=True)

    def start(self) -> Stallers:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()
        self._socks.clear()

    def _open(self) -> None:
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(self.prefix)
        except OSError:
            sock.close()
            self.refused += 1
            return
        sock.setblocking(False)
        self._socks.append(sock)

    def _hold(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.wait(_CHECK_EVERY) and time.monotonic() < deadline:
            readable, _, _ = select.select(self._socks, [], [], 0) if self._socks else ([], [], [])
            for sock in readable:  # readable = an answer (408) or EOF: the server let go
                self._socks.remove(sock)
                sock.close()
                self.reopened += 1
            for _ in range(self.count - len(self._socks)):
                self._open()
