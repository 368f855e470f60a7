"""Two replicas (two gunicorn masters, each with its own cache and data dir, as two machines)
on one S3 bucket (a real SeaweedFS) and one PostgreSQL database, under load from this process:
a register, promote and rollback reach both within two poll intervals with no failed request,
and an object store that goes away and comes back costs no prediction."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers.seaweed import BUCKET, SeaweedS3

from .conftest import (
    IRIS_ROW,
    POLL_INTERVAL,
    GunicornServer,
    free_port,
    http_request,
    predict,
    run_cli,
    server_env,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Load:
    """Three clients sending 1-row predictions to the replicas in turn; every outcome kept."""

    ports: list[int]
    outcomes: list[tuple[int, str, str]] = field(default_factory=list)  # port, status, version
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for offset in range(3):
            thread = threading.Thread(target=self._client, args=(offset,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self, offset: int) -> None:
        deadline = time.monotonic() + 120
        for port in itertools.islice(itertools.cycle(self.ports), offset, None):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                reply = predict(port, [IRIS_ROW], timeout=15)
                status, version = str(reply.status), reply.headers.get("x-model-version", "")
            except Exception as exc:  # a reset or a timeout is an outcome to count
                status, version = type(exc).__name__, ""
            self.outcomes.append((port, status, version))

    def failures(self) -> list[tuple[int, str, str]]:
        return [o for o in self.outcomes if o[1] != "200"]


def _versions(ports: list[int]) -> set[int]:
    return {http_request(p, "GET", "/v1/models/iris").body["serving"]["production"] for p in ports}


def _replicas(
    url: str, tmp_path: Path, start_server: Callable[..., GunicornServer], env: dict[str, str]
) -> list[GunicornServer]:
    servers = []
    for index in range(2):
        machine = tmp_path / f"machine-{index}"
        extra = {
            **env,
            "SERVING_MODEL_STORE": url,
            "SERVING_DATA_DIR": str(machine / "data"),
            "SERVING_CACHE_DIR": str(machine / "cache"),
        }
        servers.append(start_server(server_env(machine, free_port(), workers=2, extra=extra)))
    return servers


@pytest.fixture
def replicas(
    s3_template: str,
    tmp_path: Path,
    start_server: Callable[..., GunicornServer],
    postgres_url: str,
) -> Iterator[list[GunicornServer]]:
    """Two machines on one bucket and one PostgreSQL database."""
    database = {"SERVING_DATABASE_URL": postgres_url}
    servers = _replicas(s3_template, tmp_path, start_server, database)
    yield servers
    for server in servers:
        server.stop()


def _converge(ports: list[int], want: int, timeout: float = 10.0) -> float:
    changed = time.monotonic()
    wait_until(lambda: _versions(ports) == {want}, timeout, f"every replica on {want}")
    return time.monotonic() - changed


def test_register_promote_and_rollback_reach_both_replicas_under_load(
    replicas: list[GunicornServer], s3_template: str, iris_v2_artifact: Path, cli_env: dict
) -> None:
    ports = [s.port for s in replicas]
    with Load(ports) as load:
        time.sleep(0.5)
        register = ("models", "register", "iris", str(iris_v2_artifact))
        assert run_cli(s3_template, *register, env=cli_env) == "4\n"
        run_cli(s3_template, "models", "promote", "iris", "4", env=cli_env)
        to_new = _converge(ports, 4)
        time.sleep(0.5)
        run_cli(s3_template, "models", "rollback", "iris", env=cli_env)
        to_old = _converge(ports, 1)
        time.sleep(0.5)
    assert load.failures() == []
    assert {port for port, _, _ in load.outcomes} == set(ports)
    assert {version for _, _, version in load.outcomes} == {"1", "4"}  # each names its version
    assert max(to_new, to_old) <= 2 * POLL_INTERVAL + 0.5, (to_new, to_old)
    # ...and the shared database saw what both served: the A/B traffic of every answer.
    wait_until(lambda: _logged(ports[0]) >= len(load.outcomes), 15, "every answer logged")
    assert _logged(ports[0]) == _logged(ports[1]) == len(load.outcomes)


def _logged(port: int) -> int:
    """Requests of iris/production in the last hour, as /ab (from the database) counts them."""
    body = http_request(port, "GET", "/v1/models/iris/ab?window=1h").body
    return sum(v["requests"] for v in body["variants"])


def test_an_object_store_outage_under_load_costs_no_prediction(
    template_store: Path,
    tmp_path: Path,
    start_server: Callable[..., GunicornServer],
    monkeypatch: pytest.MonkeyPatch,
    cli_env: dict[str, str],
) -> None:
    s3 = SeaweedS3(tmp_path / "own-seaweed")  # its own: this test stops it
    s3.start()
    try:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{BUCKET}/outage/models"
        run_cli(template_store, "store", "copy", str(template_store), url, env=cli_env)
        servers = _replicas(url, tmp_path, start_server, s3.env())
        ports = [s.port for s in servers]
        with Load(ports) as load:
            time.sleep(0.5)
            s3.stop()
            time.sleep(3.0)  # many polls fail meanwhile
            for port in ports:
                assert http_request(port, "GET", "/health/ready").status == 200
            s3.start()
            run_cli(url, "models", "promote", "iris", "2", env=cli_env)
            # Polls back off while the store is down (to at most 30 s between two).
            _converge(ports, 2, timeout=45)
            time.sleep(0.5)
        assert load.failures() == []
        assert len(load.outcomes) > 100
        logged = [r for s in servers for r in s.records() if r.get("event") == "store_unavailable"]
        assert logged, "the outage is logged"
    finally:
        s3.stop()
