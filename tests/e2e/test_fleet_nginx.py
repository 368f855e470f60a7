"""The fleet: deploy/nginx in front of 3 replicas (each its own gunicorn master, cache and data
dir, as three machines; one S3 bucket and one PostgreSQL database shared), under load from
bounded clients on loopback. Killing a replica, rolling restarts
and promotes lose no request; 50 stalled connections do not slow the others down."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import statistics
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import (
    IRIS_ROW,
    POLL_INTERVAL,
    REPO,
    GunicornServer,
    free_port,
    http_request,
    predict,
    run_cli,
    server_env,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
REPLICAS = 3
CLIENTS = 4
STALLED = 50
TEMPLATES = REPO / "deploy" / "nginx"


@dataclass
class Replica:
    """One replica: its own master, port and data dir; restartable on the same port."""

    env: dict[str, str]
    start_server: Callable[..., GunicornServer]
    server: GunicornServer | None = None

    @property
    def port(self) -> int:
        return int(self.env["PORT"])

    def start(self) -> Replica:
        self.server = self.start_server(self.env)
        return self

    def kill(self) -> None:
        assert self.server is not None
        self.server.signal(signal.SIGKILL)
        self.server.wait(timeout=10)
        self.server.stop()  # closes its pipes
        # Its workers notice the dead master and leave; wait until the port is free again.
        wait_until(lambda: not _listening(self.port), 30, f"replica :{self.port} to be gone")

    def terminate(self) -> None:
        assert self.server is not None
        self.server.stop()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@dataclass
class Nginx:
    prefix: Path
    port: int
    internal_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, upstream_ports: list[int], max_body: int) -> Nginx:
        values = {
            "SERVING_UPSTREAMS": " ".join(
                f"server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports
            ),
            "SERVING_LISTEN": f"127.0.0.1:{self.port}",
            "SERVING_INTERNAL_LISTEN": f"127.0.0.1:{self.internal_port}",
            "SERVING_MAX_BODY": str(max_body),
            "SERVING_NGINX_PREFIX": str(self.prefix),
        }
        for name in ("serving.conf", "nginx.conf"):
            template = string.Template((TEMPLATES / f"{name}.template").read_text())
            (self.prefix / name).write_text(template.safe_substitute(values))
        conf = str(self.prefix / "nginx.conf")
        check = subprocess.run(
            [NGINX, "-t", "-c", conf, "-p", str(self.prefix)], capture_output=True
        )
        assert check.returncode == 0, check.stderr.decode()
        self.proc = subprocess.Popen(
            [NGINX, "-c", conf, "-p", str(self.prefix), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # error_log goes to the prefix
        )
        wait_until(lambda: _listening(self.port), 10, "nginx to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Load:
    """CLIENTS threads of 1-row predictions through nginx until stopped: every outcome kept."""

    port: int
    outcomes: list[tuple[str, str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(CLIENTS):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self) -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                reply = predict(self.port, [IRIS_ROW], timeout=15)
                outcome, version = str(reply.status), reply.headers.get("x-model-version", "")
            except Exception as exc:  # a reset or timeout is an outcome to count
                outcome, version = type(exc).__name__, ""
            self.outcomes.append((outcome, version, time.perf_counter() - started))

    def failures(self) -> list[str]:
        return [outcome for outcome, _, _ in self.outcomes if outcome != "200"]

    def p99(self) -> float:
        return statistics.quantiles([s for _, _, s in self.outcomes], n=100)[98]


@pytest.fixture
def fleet(
    s3_template: str,
    postgres_url: str,
    start_server: Callable[..., GunicornServer],
    tmp_path: Path,
) -> Iterator[tuple[list[Replica], Nginx, str]]:
    """3 replicas as 3 machines (own cache and data dir) on one bucket and one database."""
    if NGINX is None:
        pytest.skip("nginx is not installed (`make nginx` installs Debian's package)")
    store = s3_template
    replicas = []
    for i in range(REPLICAS):
        machine = {
            "SERVING_MODEL_STORE": store,
            "SERVING_DATA_DIR": str(tmp_path / f"data-{i}"),
            "SERVING_CACHE_DIR": str(tmp_path / f"cache-{i}"),
            "SERVING_DATABASE_URL": postgres_url,
        }
        env = server_env(tmp_path, free_port(), workers=1, extra=machine)
        env["PORT"] = str(free_port())
        replicas.append(Replica(env, start_server).start())
    (tmp_path / "nginx").mkdir()
    nginx = Nginx(tmp_path / "nginx", free_port(), free_port())
    nginx.start([r.port for r in replicas], max_body=8 * 1024 * 1024)
    yield replicas, nginx, store
    nginx.stop()
    for replica in replicas:
        replica.terminate()


def _served_by(replica: Replica, since: int) -> int:
    assert replica.server is not None
    return sum(
        1 for r in replica.server.records(since) if r.get("path") == "/v1/models/iris/predict"
    )


def test_a_killed_replica_loses_no_request_and_rejoins(fleet: tuple) -> None:
    replicas, nginx, _ = fleet
    victim = replicas[0]
    with Load(nginx.port) as load:
        time.sleep(1.5)
        victim.kill()
        time.sleep(1.5)
        victim.start()
        mark = len(victim.server.lines)  # type: ignore[union-attr]
        wait_until(lambda: _served_by(victim, mark) > 0, 15, "the restarted replica to serve")
    assert load.outcomes and load.failures() == []


def test_a_rolling_restart_loses_no_request(fleet: tuple) -> None:
    replicas, nginx, _ = fleet
    with Load(nginx.port) as load:
        for replica in replicas:
            time.sleep(0.5)
            replica.terminate()
            replica.start()  # returns once ready and every worker has loaded
    assert len(load.outcomes) > 50 and load.failures() == []


def _production_versions(replicas: list[Replica]) -> set[int]:
    versions = set()
    for replica in replicas:
        reply = http_request(replica.port, "GET", "/v1/models/iris")
        versions.add(reply.body["serving"]["production"])
    return versions


def test_promote_and_rollback_under_load_converge_on_every_replica(
    fleet: tuple, cli_env: dict[str, str]
) -> None:
    replicas, nginx, store = fleet
    with Load(nginx.port) as load:
        for version in ("2", "rollback"):
            args = ("promote", "iris", "2") if version == "2" else ("rollback", "iris")
            run_cli(store, "models", *args, env=cli_env)
            changed = time.monotonic()
            want = {2} if version == "2" else {1}
            wait_until(lambda w=want: _production_versions(replicas) == w, 10, f"{want}")
            assert time.monotonic() - changed <= 2 * POLL_INTERVAL + 1.0
            time.sleep(1.0)
    assert load.failures() == []
    assert {v for _, v, _ in load.outcomes} == {"1", "2"}  # every answer names its version


def _stall(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nContent-Le")
    return sock


def test_stalled_connections_do_not_slow_the_others(fleet: tuple) -> None:
    _, nginx, _ = fleet
    with Load(nginx.port) as calm:
        time.sleep(3)
    stalled = [_stall(nginx.port) for _ in range(STALLED)]
    try:
        with Load(nginx.port) as attacked:
            time.sleep(3)
    finally:
        for sock in stalled:
            sock.close()
    assert calm.failures() == [] and attacked.failures() == []
    # 2x the calm p99, with a floor of 25 ms for a shared 2-core machine's jitter.
    assert attacked.p99() <= 2 * max(calm.p99(), 0.025), (calm.p99(), attacked.p99())


def test_admin_and_metrics_are_not_public(fleet: tuple) -> None:
    _, nginx, _ = fleet
    for path in ("/metrics", "/v1/admin/models/iris/promote", "/dashboard", "/v1/dashboard/data"):
        reply = http_request(nginx.port, "GET", path)
        assert reply.status == 404 and reply.body["error"]["code"] == "not_found", path
    assert http_request(nginx.internal_port, "GET", "/metrics").status == 200


def test_nginx_answers_its_own_errors_in_the_api_shape(fleet: tuple) -> None:
    _, nginx, _ = fleet
    reply = http_request(
        nginx.port, "POST", "/v1/models/iris/predict", {"instances": [[0.0] * 4] * 400_000}
    )
    assert reply.status == 413 and reply.body["error"]["code"] == "payload_too_large"
