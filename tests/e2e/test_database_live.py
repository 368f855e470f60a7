"""End-to-end: two replicas (two gunicorn masters, each with its own data directory, as two
machines) on one PostgreSQL telemetry database. The A/B report, drift and traffic counts sum
both; with the database stopped under load no prediction fails, and telemetry resumes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import pg

from .conftest import (
    IRIS_ROW,
    GunicornServer,
    http_request,
    predict,
    run_cli,
    server_env,
    statsd_listener,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUESTS = 120  # per replica


def _replica_env(store: Path, root: Path, statsd_port: int, url: str) -> dict[str, str]:
    return server_env(
        store,
        statsd_port,
        workers=2,
        extra={
            "SERVING_DATA_DIR": str(root / "data"),  # its own: only the database is shared
            "SERVING_DATABASE_URL": url,
            "SERVING_MONITOR_FLUSH": "0.2",
        },
    )


def _ab(port: int) -> dict:
    reply = http_request(port, "GET", "/v1/models/iris/ab?window=1h")
    assert reply.status == 200, reply.raw
    return reply.body


def _served(body: dict) -> int:
    return sum(v["requests"] for v in body["variants"])


def _logged(port: int) -> int:
    """Predictions in the A/B report; -1 while the worker that answers cannot read it (503)."""
    reply = http_request(port, "GET", "/v1/models/iris/ab?window=1h")
    return _served(reply.body) if reply.status == 200 else -1


def test_two_replicas_on_one_database_sum_in_the_ab_report_drift_and_traffic(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    postgres_url: str,
    tmp_path: Path,
) -> None:
    store = copy_store()
    run_cli(store, "models", "route", "iris", "1=50", "2=50", "--sticky")
    with statsd_listener() as statsd:
        replicas = [
            start_server(_replica_env(store, tmp_path / name, statsd.port, postgres_url))
            for name in ("a", "b")
        ]
        served: Counter[str] = Counter()
        for i in range(REQUESTS):
            for replica in replicas:
                key = f"user-{i % 40}"
                reply = predict(replica.port, [IRIS_ROW], headers={"X-Routing-Key": key})
                assert reply.status == 200, reply.raw
                served[reply.body["variant"]] += 1
        total = 2 * REQUESTS
        for replica in replicas:  # either replica reports what both served
            wait_until(lambda r=replica: _served(_ab(r.port)) == total, 15, "both in /ab")
        body = _ab(replicas[0].port)
        assert {v["variant"]: v["requests"] for v in body["variants"]} == dict(served)

        def drift_rows() -> int:
            reply = http_request(replicas[1].port, "GET", "/v1/models/iris/monitoring?window=1h")
            assert reply.status == 200, reply.raw
            return int(reply.body["rows"])

        def traffic() -> int:
            reply = http_request(replicas[0].port, "GET", "/v1/dashboard/data?window=15m")
            assert reply.status == 200, reply.raw
            return int(reply.body["totals"]["requests"])

        # v1 and v2 each keep their drift counts; production (v1) served about half
        wait_until(lambda: drift_rows() == served["v1"], 15, "drift counts of both replicas")
        wait_until(lambda: traffic() == total, 15, "traffic counts of both replicas")
        for replica in replicas:
            replica.stop()
    env = {"SERVING_DATABASE_URL": postgres_url}
    cli = run_cli(store, "ab", "iris", "--window", "1h", "--json", env=env)
    assert f'"requests": {served["v1"]}' in cli and f'"requests": {served["v2"]}' in cli


@pytest.fixture
def own_cluster() -> Iterator[pg.Cluster]:
    """A PostgreSQL server of this test alone: it is stopped and started again."""
    with pg.cluster_or_skip() as cluster:
        yield cluster


class _Load:
    """Predictions from two threads until stopped; counts what was answered and how."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = predict(self.port, [IRIS_ROW])
                self.statuses[reply.status] += 1
            except OSError as exc:  # a refused or reset connection is a failed prediction
                self.failures.append(repr(exc))


def test_database_stopped_under_load_fails_no_prediction_and_telemetry_resumes(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    own_cluster: pg.Cluster,
    tmp_path: Path,
) -> None:
    store, url = copy_store(), own_cluster.database()
    with statsd_listener() as statsd:
        server = start_server(_replica_env(store, tmp_path, statsd.port, url))
        with _Load(server.port) as load:
            wait_until(lambda: _logged(server.port) > 20, 15, "telemetry written")
            own_cluster.stop("fast")
            time.sleep(2.0)
            down = http_request(server.port, "GET", "/v1/models/iris/ab?window=1h")
            assert down.status == 503, down.raw
            assert down.body["error"]["code"] == "data_store_unavailable"
            assert pg.PASSWORD not in down.raw.decode()
            dashboard = http_request(server.port, "GET", "/v1/dashboard/data")
            assert dashboard.status == 503 and "error" in dashboard.body
            time.sleep(1.0)
            own_cluster.start()
            time.sleep(1.0)
        assert load.failures == [] and set(load.statuses) == {200}, (load.failures, load.statuses)
        answered = load.statuses[200]
        # every prediction was buffered (far below the bound) and written after the restart
        wait_until(lambda: _logged(server.port) == answered, 60, "telemetry resumed", step=0.5)
        server.stop()
    assert pg.PASSWORD not in server.output()
    assert any("unreachable" in line for line in server.lines), server.output()
