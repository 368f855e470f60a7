"""A StatsD stand-in: a UDP socket the bench binds and drains, counting `requests.<status>`."""

from __future__ import annotations

import socket
import threading
from collections import Counter

DEFAULT_PORT = 8125  # SERVING_STATSD_PORT's default


class StatsdSink:
    """Receives every datagram on 127.0.0.1:<port> in a thread; counts packets and statuses."""

    def __init__(self, port: int = DEFAULT_PORT) -> None:
        """On `port` (StatsD's default, where `make run` sends) or, if taken, any free one."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        try:
            self._sock.bind(("127.0.0.1", port))
        except OSError:
            self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.packets = 0
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="statsd-sink", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.packets += 1
            for line in data.split(b"\n"):
                name, _, rest = line.partition(b":")
                if b".requests." in name and rest.endswith(b"|c"):
                    self.statuses[name.rsplit(b".", 1)[1].decode()] += int(rest[:-2])

    def snapshot(self) -> tuple[int, dict[str, int]]:
        return self.packets, dict(self.statuses)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
