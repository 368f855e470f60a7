"""End-to-end: 2 gunicorn workers count live drift statistics into the shared store; the
monitoring report (HTTP and CLI) sums both, and keeps a SIGKILLed worker's flushed counts."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from sklearn.datasets import load_iris

from .conftest import (
    GunicornServer,
    http_request,
    run_cli,
    server_env,
    statsd_listener,
    wait_for_replacement,
    wait_for_workers,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _send(port: int, rows: list[list[float]], start: int, count: int) -> None:
    for i in range(start, start + count):
        reply = http_request(
            port, "POST", "/v1/models/iris/predict", {"instances": [rows[i % len(rows)]]}
        )
        assert reply.status == 200, reply.raw


def test_monitoring_sums_workers_and_survives_a_killed_one(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    tmp_path: Path,
) -> None:
    store, data_dir = copy_store(), tmp_path / "data"
    rows = load_iris().data.tolist()
    with statsd_listener() as statsd:
        extra = {"SERVING_DATA_DIR": str(data_dir), "SERVING_MONITOR_FLUSH": "0.2"}
        server = start_server(server_env(store, statsd.port, workers=2, extra=extra))
        workers = wait_for_workers(server.port, 2)
        _send(server.port, rows, 0, 150)
        assert server.served_by("iris", workers) == workers  # the sums are over two workers

        def rows_counted() -> int:
            reply = http_request(server.port, "GET", "/v1/models/iris/monitoring?window=1h")
            assert reply.status == 200, reply.raw
            return int(reply.body["rows"])

        wait_until(lambda: rows_counted() == 150, 10, "both workers' counts", step=0.1)
        reply = http_request(server.port, "GET", "/v1/models/iris/monitoring?window=1h")
        body = reply.body
        assert body["reference"] is True and body["version"] == 1
        assert sum(body["predictions"].values()) == 150
        assert {f["name"] for f in body["features"]} == {
            "sepal length (cm)",
            "sepal width (cm)",
            "petal length (cm)",
            "petal width (cm)",
        }
        assert all(f["rows"] == 150 for f in body["features"])
        # the report sent the drift gauges to StatsD
        wait_until(
            lambda: any(p.startswith("test.drift.iris.1.") for p in statsd.packets()),
            5,
            "a drift gauge",
        )

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_for_replacement(server.port, victim, 2)
        assert rows_counted() == 150  # the dead worker's flushed counts are kept
        _send(server.port, rows, 150, 50)
        wait_until(lambda: rows_counted() == 200, 10, "counts after the restart", step=0.1)

        out = run_cli(store, "monitor", "iris", "--window", "1h", "--data-dir", str(data_dir))
        assert "iris v1" in out and "200 rows" in out and "petal width (cm)" in out
        assert server.stop() == 0
