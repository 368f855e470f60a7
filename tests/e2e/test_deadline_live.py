"""SERVING_REQUEST_TIMEOUT on real gunicorn workers (gevent, the default): a poisoned request
that would run for 30 s answers 504 in our shape at the deadline, and the worker that took it
lives on (gunicorn's own timeout, which would kill it, never fires)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.slow_model import POISON, slow_artifact

from .conftest import GunicornServer, http_request, run_cli, server_env, survey_workers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_slow_prediction_is_a_504_and_no_worker_dies(
    tmp_path: Path, start_server: Callable[..., GunicornServer]
) -> None:
    store = tmp_path / "store"
    artifact = slow_artifact(tmp_path / "slow.joblib")
    run_cli(store, "models", "register", "slow", str(artifact), "--activate")
    env = server_env(store, 9, workers=2, extra={"SERVING_REQUEST_TIMEOUT": "1"})
    server = start_server(env)
    before = set(survey_workers(server.port, name="slow"))
    started = time.monotonic()
    reply = http_request(
        server.port, "POST", "/v1/models/slow/predict", {"instances": [[POISON, 0, 0, 0]]}
    )
    took = time.monotonic() - started
    assert reply.status == 504 and reply.body["error"]["code"] == "request_timeout", reply.raw
    assert 0.9 <= took < 5, took
    for _ in range(20):
        ok = http_request(
            server.port, "POST", "/v1/models/slow/predict", {"instances": [[1, 2, 3, 4]]}
        )
        assert ok.status == 200
    assert set(survey_workers(server.port, name="slow")) == before  # the same two workers
    assert not [line for line in server.lines if "WORKER TIMEOUT" in line]
    assert any('"event": "request_timeout"' in line or '"request_timeout"' in line
               for line in server.lines)  # fmt: skip


def test_each_request_under_gevent_has_its_own_deadline(
    tmp_path: Path, start_server: Callable[..., GunicornServer]
) -> None:
    """Two slow predictions that wait (the model yields to gevent) in one worker, the second
    started while the first runs: each answers 504 at its own deadline, and a normal request
    sent meanwhile is answered at once. (One deadline per process let the second replace the
    first's, which then ran for the model's full 30 s.)"""
    store = tmp_path / "store"
    artifact = slow_artifact(tmp_path / "waits.joblib", waits=True)
    run_cli(store, "models", "register", "slow", str(artifact), "--activate")
    server = start_server(server_env(store, 9, workers=1, extra={"SERVING_REQUEST_TIMEOUT": "1"}))
    took: dict[str, tuple[int, float]] = {}

    def send(label: str, row: list[float]) -> None:
        started = time.monotonic()
        reply = http_request(server.port, "POST", "/v1/models/slow/predict", {"instances": [row]})
        took[label] = (reply.status, time.monotonic() - started)

    first = threading.Thread(target=send, args=("first", [POISON, 0, 0, 0]))
    second = threading.Thread(target=send, args=("second", [POISON, 1, 0, 0]))
    first.start()
    time.sleep(0.4)
    second.start()
    time.sleep(0.2)
    send("normal", [1, 2, 3, 4])
    first.join(10)
    second.join(10)
    assert set(took) == {"first", "second", "normal"}, f"not answered within 10 s: {took}"
    assert took["normal"][0] == 200 and took["normal"][1] < 0.5, took
    for label in ("first", "second"):
        status, seconds = took[label]
        assert status == 504 and 0.9 <= seconds < 2.0, took
