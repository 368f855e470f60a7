"""A damaged deployment.json on a live server: restarted workers (HUP, a killed worker) keep
serving the last good deployment, and readiness is honest when there is none to fall back to."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import (
    IRIS_ROW,
    GunicornServer,
    http_request,
    predict,
    run_cli,
    server_env,
    survey_workers,
    wait_until,
)

pytestmark = pytest.mark.e2e
WORKERS = 2


def _refused_by_every_worker(port: int) -> bool:
    seen = survey_workers(port, WORKERS, strict=False)
    return len(seen) == WORKERS and all("deployment.json" in b["problems"] for b in seen.values())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _new_workers(port: int, old: set[int]) -> bool:
    """Every old worker has exited (after a HUP they serve until the new ones are ready, so
    seeing new ones alone does not mean the old ones stopped) and the new ones answer."""
    if not all(_gone(pid) for pid in old):
        return False
    seen = set(survey_workers(port, WORKERS, strict=False))
    return len(seen) == WORKERS and not seen & old


def test_restarted_workers_keep_the_last_good_deployment(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    store = copy_store()
    run_cli(store, "models", "promote", "iris", "2")
    server = start_server(server_env(store, statsd_port=9, workers=WORKERS))
    assert predict(server.port, [IRIS_ROW]).headers["x-model-version"] == "2"

    (store / "iris" / "deployment.json").write_bytes(b'{"aliases": {"produc')
    wait_until(lambda: _refused_by_every_worker(server.port), 10, "every worker to refuse it")

    old = set(survey_workers(server.port, WORKERS))
    server.signal(signal.SIGHUP)  # new workers, started on the damaged file
    wait_until(lambda: _new_workers(server.port, old), 30, "new workers")
    replies = [predict(server.port, [IRIS_ROW]) for _ in range(20)]
    assert {(r.status, r.headers["x-model-version"]) for r in replies} == {(200, "2")}
    assert http_request(server.port, "GET", "/health/ready").status == 200
    problems = next(iter(survey_workers(server.port, WORKERS).values()))["problems"]
    assert "from history.jsonl" in problems["deployment.json"]

    # With history gone too, a new worker has nothing to serve and says so.
    (store / "iris" / "history.jsonl").unlink()
    victim = next(iter(survey_workers(server.port, WORKERS)))
    os.kill(victim, signal.SIGKILL)
    ready = wait_until(  # the new worker (the other one keeps its deployment from memory)
        lambda: (r := http_request(server.port, "GET", "/health/ready")).status == 503 and r,
        30,
        "the new worker's readiness 503",
    )
    assert "not valid JSON" in ready.body["waiting"]["iris:deployment.json"]
    statuses = {predict(server.port, [IRIS_ROW]).status for _ in range(40)}
    assert statuses <= {200, 503} and 404 not in statuses
