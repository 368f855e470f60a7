"""Per-request StatsD lines gathered in the worker and sent in full datagrams.

A request used to cost one UDP datagram (a `sendto` syscall: 20-60 µs of the request's own
time, the largest telemetry cost measured in issue 14). Here a request adds its lines to a
per-process batch instead: counters are summed (`requests.200:17|c`: StatsD sums counters over
its flush interval anyway), timers are kept one sample per request (StatsD computes their
percentiles from every sample). The batch is sent, split into datagrams of at most
`MAX_PAYLOAD` bytes (one Ethernet MTU less the IP and UDP headers), when it reaches that size in
the request that fills it, or by a daemon thread every `FLUSH_SECONDS`, or at `close`.

Nothing here raises into a request: a send that fails (nobody listening, no route) drops its
lines, as the unbatched client did.
"""

from __future__ import annotations

import socket
import threading

FLUSH_SECONDS = 0.2  # far under StatsD's own flush interval (10 s by default)
MAX_PAYLOAD = 1432  # 1500 (Ethernet MTU) - 20 (IPv4) - 8 (UDP) - 40 (room for IP options/IPv6)


class StatsdBatch:
    """Counters and timer samples of one process, flushed by size, by time and at close."""

    def __init__(self, address: tuple, family: int, prefix: str) -> None:
        self._address, self._prefix = address, f"{prefix}." if prefix else ""
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a full send buffer drops lines, never blocks a request
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._timers: list[str] = []
        self._size = 0  # bytes of the lines held (an estimate for counters: one line each)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._flush_forever, name="statsd-batch", daemon=True
        )
        self._thread.start()

    def add(self, counters: dict[str, int], timer: str | None) -> None:
        """Sum `counters` ({name: count}) and keep `timer` (a "name:value|ms" line)."""
        full = None
        with self._lock:
            held = self._counters
            for name, count in counters.items():
                if name in held:
                    held[name] += count
                else:
                    held[name] = count
                    self._size += len(name) + 8
            if timer is not None:
                self._timers.append(timer)
                self._size += len(timer) + len(self._prefix) + 1
            if self._size >= MAX_PAYLOAD:
                full = self._take()
        if full:
            self._send(full)

    def flush(self) -> None:
        with self._lock:
            lines = self._take()
        if lines:
            self._send(lines)

    def close(self) -> None:
        self._stop.set()
        self.flush()
        self._sock.close()

    def _take(self) -> list[str]:
        """The held lines (prefixed), emptying the batch; call with the lock held."""
        prefix = self._prefix
        lines = [f"{prefix}{name}:{count}|c" for name, count in self._counters.items()]
        lines += [prefix + timer for timer in self._timers]
        self._counters, self._timers, self._size = {}, [], 0
        return lines

    def _send(self, lines: list[str]) -> None:
        for payload in packets(lines, MAX_PAYLOAD):
            try:
                self._sock.sendto(payload, self._address)
            except OSError:  # nobody listening (ICMP unreachable), buffer full, closed
                continue

    def _flush_forever(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                self.flush()
            except Exception:  # the flusher must outlive any one bad send
                continue


def packets(lines: list[str], limit: int) -> list[bytes]:
    """`lines` joined by newlines into payloads of at most `limit` bytes (a longer line alone)."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode("ascii", "replace")
        if current and size + 1 + len(data) > limit:
            out.append(b"\n".join(current))
            current, size = [], 0
        size += len(data) + (1 if current else 0)
        current.append(data)
    if current:
        out.append(b"\n".join(current))
    return out


def open_batch(host: str, port: int, prefix: str) -> StatsdBatch | None:
    """A batch sending to host:port (resolved once), or None if the host does not resolve."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    except (OSError, UnicodeError):
        return None
    return StatsdBatch(address, family, prefix)
