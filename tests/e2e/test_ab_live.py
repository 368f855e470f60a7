"""End-to-end: a sticky 50/50 split on 2 gunicorn workers, feedback, and an A/B report that
sums what both workers logged (over HTTP and from the CLI)."""

from __future__ import annotations

from collections import Counter
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
    wait_until,
)

pytestmark = pytest.mark.e2e

REQUESTS = 200


def test_ab_report_sums_predictions_and_feedback_of_both_workers(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    tmp_path: Path,
) -> None:
    store, data_dir = copy_store(), tmp_path / "data"
    run_cli(store, "models", "route", "iris", "1=50", "2=50", "--sticky")
    bunch = load_iris()
    rows, labels = bunch.data.tolist(), [bunch.target_names[t] for t in bunch.target]
    with statsd_listener() as statsd:
        env = server_env(store, statsd.port, workers=2, extra={"SERVING_DATA_DIR": str(data_dir)})
        server = start_server(env)
        try:
            served: dict[str, str] = {}
            for i in range(REQUESTS):
                reply = http_request(
                    server.port,
                    "POST",
                    "/v1/models/iris/predict",
                    {"instances": [rows[i % len(rows)]]},
                    headers={"X-Routing-Key": f"user-{i % 50}", "X-Request-ID": f"e2e-{i}"},
                )
                assert reply.status == 200, reply.raw
                served[reply.body["request_id"]] = reply.body["variant"]
            by_key: dict[str, set[str]] = {}
            for i in range(REQUESTS):
                by_key.setdefault(f"user-{i % 50}", set()).add(served[f"e2e-{i}"])
            assert all(len(variants) == 1 for variants in by_key.values())  # sticky

            def report() -> dict:
                reply = http_request(server.port, "GET", "/v1/models/iris/ab?window=1h")
                assert reply.status == 200, reply.raw
                return reply.body

            # Each worker's writer commits within ~0.2 s; wait until both have.
            wait_until(
                lambda: sum(v["requests"] for v in report()["variants"]) == REQUESTS,
                10,
                "every prediction in the A/B report",
                step=0.1,
            )
            accepted = 0
            for start in (0, REQUESTS // 2):
                batch = [
                    {"request_id": f"e2e-{i}", "label": labels[i % len(rows)]}
                    for i in range(start, start + REQUESTS // 2)
                ]
                reply = http_request(server.port, "POST", "/v1/feedback", {"feedback": batch})
                assert reply.status == 200 and reply.body["unknown"] == [], reply.raw
                accepted += reply.body["accepted"]
            assert accepted == REQUESTS

            body = report()
            counts = Counter(served.values())
            assert {v["variant"]: v["requests"] for v in body["variants"]} == dict(counts)
            assert set(counts) == {"v1", "v2"}
            assert sum(v["feedback"]["labelled"] for v in body["variants"]) == REQUESTS
            assert body["variants"][1]["vs_primary"]["against"] == "v1"
            assert body["verdict"]["text"]

            def workers() -> set[int]:
                return {
                    record["process"]
                    for record in server.records()
                    if record.get("path") == "/v1/models/iris/predict"
                }

            wait_until(lambda: len(workers()) == 2, 5, "request lines of both workers")
            # the report summed two workers' logs
        finally:
            server.stop()  # flushes each worker's queue on its way out
    cli = run_cli(store, "ab", "iris", "--data-dir", str(data_dir), "--window", "1h")
    assert "verdict:" in cli and "v1*" in cli and "v2" in cli
