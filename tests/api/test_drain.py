"""The SIGTERM drain (serving.api.drain) with a stand-in arbiter; readiness while draining.

The live version, under load with real gunicorn: tests/e2e/test_drain_live.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from serving.api import drain


class Arbiter:
    """What the drain uses of gunicorn's Arbiter: queued signals, housekeeping, stop, log."""

    def __init__(self, signals: list[int] | None = None) -> None:
        self.signals = list(signals or [])
        self.log = logging.getLogger("test.arbiter")
        self.LISTENERS: list[Any] = []
        self.calls: list[str] = []
        self.reexec_pid = self.master_pid = 0
        self.systemd = False

    def wait_for_signals(self, timeout: float) -> list[int]:
        if self.signals:
            return [self.signals.pop(0)]
        time.sleep(timeout)
        return []

    def handle_chld(self) -> None:
        self.calls.append("chld")

    def murder_workers(self) -> None:
        self.calls.append("murder")

    def manage_workers(self) -> None:
        self.calls.append("manage")

    def stop(self, graceful: bool = True) -> None:
        self.calls.append(f"stop graceful={graceful}")


def test_no_drain_leaves_gunicorns_sigterm_alone(tmp_path: Path) -> None:
    arbiter = Arbiter()
    drain.install(arbiter, 0, str(tmp_path))
    assert "handle_term" not in vars(arbiter)


def test_drain_flags_the_master_keeps_house_then_stops_gracefully(tmp_path: Path) -> None:
    arbiter = Arbiter([signal.SIGCHLD])
    drain.install(arbiter, 0.3, str(tmp_path))
    started = time.monotonic()
    with pytest.raises(StopIteration):
        arbiter.handle_term()  # type: ignore[attr-defined]
    assert time.monotonic() - started >= 0.3
    assert os.path.exists(drain.flag_path(str(tmp_path), os.getpid()))
    assert "chld" in arbiter.calls and "manage" in arbiter.calls
    assert not any(call.startswith("stop") for call in arbiter.calls)  # halt() stops, gracefully
    drain.remove_flag(str(tmp_path))
    assert not os.path.exists(drain.flag_path(str(tmp_path), os.getpid()))


def test_a_second_sigterm_cuts_the_drain_short(tmp_path: Path) -> None:
    arbiter = Arbiter([signal.SIGTERM])
    drain.install(arbiter, 30, str(tmp_path))
    started = time.monotonic()
    with pytest.raises(StopIteration):
        arbiter.handle_term()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    assert arbiter.calls == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_sigint_or_sigquit_during_the_drain_stops_at_once(tmp_path: Path, signum: int) -> None:
    arbiter = Arbiter([signum])
    drain.install(arbiter, 30, str(tmp_path))
    with pytest.raises(StopIteration):
        arbiter.handle_term()  # type: ignore[attr-defined]
    assert arbiter.calls == ["stop graceful=False"]


def test_the_queue_of_a_socket_shared_with_a_usr2_successor_is_left_open(
    tmp_path: Path,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        arbiter = Arbiter([signal.SIGTERM])
        arbiter.LISTENERS = [type("Listener", (), {"sock": listener})()]
        arbiter.reexec_pid = 4242  # the new master serves from the same socket
        drain.install(arbiter, 30, str(tmp_path))
        with pytest.raises(StopIteration):
            arbiter.handle_term()  # type: ignore[attr-defined]
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # still accepted into the queue: no SYN filter


def test_emptying_the_queue_refuses_new_connections_and_keeps_queued_ones() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.05)
        assert drain.empty_queues([listener], time.monotonic() + 0.2) == 1  # nobody accepts
        late = socket.socket()
        late.settimeout(0.3)
        with pytest.raises(TimeoutError):  # its SYN is dropped: it retries, is never queued
            late.connect(("127.0.0.1", port))
        late.close()
        accepted, _ = listener.accept()
        queued.sendall(b"x")
        assert accepted.recv(1) == b"x"
        assert drain.empty_queues([listener], time.monotonic() + 0.2) == 0
        accepted.close()
        queued.close()


def test_ready_says_draining_once_the_master_flagged_it(
    client: FlaskClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert client.get("/health/ready").status_code == 200
    Path(drain.flag_path(str(tmp_path), os.getppid())).touch()
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json() == {"status": "not_ready", "reason": "draining"}
    assert client.get("/health/live").status_code == 200
