"""End-to-end: one real 2-worker gunicorn server, driven over HTTP, by the CLI and by signals.

The tests of this module share one server and one store (started once, for speed). Each test
sets up the deployment it needs instead of relying on the order the tests run in.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import (
    IRIS_ROW,
    SWAP_DEADLINE,
    GunicornServer,
    StatsdListener,
    deployment_changed_at,
    finish_cli,
    http_request,
    predict,
    reap,
    run_cli,
    server_env,
    sleep_until,
    start_cli,
    statsd_listener,
    survey_workers,
    wait_for_replacement,
    wait_until,
)

pytestmark = pytest.mark.e2e

MAX_BODY_BYTES = 4096
CORRUPT = 3  # the iris version whose artifact the tests damage
WORKERS = 2


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    with statsd_listener() as listener:
        yield listener


@pytest.fixture(scope="module")
def store(copy_store: Callable[[], Path]) -> Path:
    """iris 1 (production), 2, and 3 (a copy of 2 that tests corrupt); diabetes 1."""
    return copy_store()


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., GunicornServer], store: Path, statsd: StatsdListener
) -> Iterator[GunicornServer]:
    env = server_env(store, statsd.port, WORKERS, {"SERVING_MAX_BODY_BYTES": str(MAX_BODY_BYTES)})
    server = start_server(env)
    yield server
    server.stop()


def serving_version(body: dict) -> int:
    return body["serving"]["production"]


def by_worker(workers: dict[int, dict]) -> dict[int, int]:
    """{worker pid: the iris version it serves in production}."""
    return {pid: serving_version(body) for pid, body in workers.items()}


def deploy(server: GunicornServer, store: Path, version: int) -> dict[int, dict]:
    """Promote iris `version` with the CLI, wait the swap deadline, check every worker has it."""
    run_cli(store, "models", "promote", "iris", str(version))
    sleep_until(deployment_changed_at(store, "iris") + SWAP_DEADLINE)
    workers = survey_workers(server.port, WORKERS)
    assert by_worker(workers) == dict.fromkeys(workers, version)
    return workers


def corrupt_version(store: Path) -> int:
    """Overwrite bytes of the stored iris version 3 (new random ones each time); its number.

    The size stays, the sha256 no longer matches, and the file's mtime changes, so workers
    that remembered an earlier failure of this version try it again.
    """
    with open(store / "iris" / str(CORRUPT) / "model.joblib", "r+b") as stored:
        stored.seek(200)
        stored.write(os.urandom(32))
    return CORRUPT


def current_version(server: GunicornServer) -> int:
    return serving_version(http_request(server.port, "GET", "/v1/models/iris").body)


# -- predictions -----------------------------------------------------------------------------


def test_predict_answers_with_version_and_echoes_request_id(server: GunicornServer) -> None:
    reply = predict(server.port, [IRIS_ROW], headers={"X-Request-ID": "e2e-predict-1"})

    assert reply.status == 200, reply.raw
    assert reply.body["model"] == "iris"
    assert reply.body["predictions"] == ["setosa"]
    assert reply.body["request_id"] == "e2e-predict-1"
    assert reply.headers["x-request-id"] == "e2e-predict-1"
    assert reply.headers["x-model-version"] == str(reply.body["version"])
    assert reply.headers["content-type"] == "application/json"


def test_predict_generates_a_request_id_when_none_is_sent(server: GunicornServer) -> None:
    reply = predict(server.port, [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]])

    assert reply.status == 200, reply.raw
    assert reply.body["predictions"] == ["setosa", "virginica"]
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["x-request-id"])
    assert reply.body["request_id"] == reply.headers["x-request-id"]


def test_predict_pinned_version_is_served_whatever_the_alias(server: GunicornServer) -> None:
    reply = http_request(
        server.port,
        "POST",
        "/v1/models/iris/versions/2/predict",
        {"instances": [IRIS_ROW], "return_proba": True},
    )

    assert reply.status == 200, reply.raw
    assert reply.headers["x-model-version"] == "2"
    assert reply.body["classes"] == ["setosa", "versicolor", "virginica"]
    assert abs(sum(reply.body["probabilities"][0]) - 1.0) < 1e-9


def test_regressor_predicts_too(server: GunicornServer) -> None:
    reply = predict(server.port, [[0.0] * 10], name="diabetes")

    assert reply.status == 200, reply.raw
    assert isinstance(reply.body["predictions"][0], float)


# -- StatsD and logs -------------------------------------------------------------------------


def test_prediction_sends_statsd_counters_and_timer(
    server: GunicornServer, statsd: StatsdListener
) -> None:
    statsd.clear()
    reply = predict(server.port, [IRIS_ROW, IRIS_ROW])
    assert reply.status == 200, reply.raw
    version = reply.headers["x-model-version"]
    timer = re.compile(rf"test\.request\.iris\.{version}:\d+(\.\d+)?\|ms")

    def total(name: str) -> int:  # a worker sums its counters over 0.2 s before sending
        return sum(int(m.split(":")[1][:-2]) for m in statsd.metrics() if m.startswith(name + ":"))

    def arrived() -> bool:
        return (
            total("test.requests.200") >= 1
            and any(timer.fullmatch(m) for m in statsd.metrics())
            and total("test.predictions.iris.setosa") >= 2
        )

    wait_until(arrived, 5, f"StatsD metrics of one prediction; got {statsd.packets()}")


def test_every_stdout_line_is_json_and_requests_are_logged_with_context(
    server: GunicornServer,
) -> None:
    reply = predict(server.port, [IRIS_ROW] * 3, headers={"X-Request-ID": "e2e-log-1"})
    assert reply.status == 200, reply.raw

    record = server.wait_for_record(
        lambda r: r.get("logger") == "serving.request" and r.get("request_id") == "e2e-log-1",
        "the request log line of e2e-log-1",
    )
    assert record["method"] == "POST"
    assert record["path"] == "/v1/models/iris/predict"
    assert record["status"] == 200
    assert record["model"] == "iris"
    assert record["version"] == int(reply.headers["x-model-version"])
    assert record["rows"] == 3
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    not_json = [line for line in list(server.lines) if line.strip() and not _is_json(line)]
    assert not_json == []
    assert [line for line in server.errors if line.strip()] == []  # nothing on stderr


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# -- hot swap ----------------------------------------------------------------------------------


def test_promote_reaches_every_worker_within_two_poll_intervals_without_traffic(
    server: GunicornServer, store: Path
) -> None:
    target = 2 if current_version(server) == 1 else 1
    seen_before = len(server.lines)

    run_cli(store, "models", "promote", "iris", str(target))
    changed_at = deployment_changed_at(store, "iris")
    sleep_until(changed_at + SWAP_DEADLINE)  # no request at all while the workers poll

    # Both workers loaded the new version on their own, before any request reached them.
    loaded = [
        r
        for r in server.records(seen_before)
        if r.get("event") in ("loaded", "reused")  # reused: still held from an earlier swap
        and r.get("model") == "iris"
        and r.get("version") == target
    ]
    requests = [  # the log line of current_version()'s own request may be read late: skip it
        r
        for r in server.records(seen_before)
        if r.get("logger") == "serving.request"
        and dt.datetime.fromisoformat(r["timestamp"]).timestamp() >= changed_at
    ]
    assert requests == []
    workers = survey_workers(server.port, WORKERS)
    assert by_worker(workers) == dict.fromkeys(workers, target)
    assert set(workers) <= {r["process"] for r in loaded}
    lags = [dt.datetime.fromisoformat(r["timestamp"]).timestamp() - changed_at for r in loaded]
    print(
        f"\npromote seen by the workers {', '.join(f'{lag * 1000:.0f}' for lag in lags)} ms "
        "after deployment.json changed"
    )
    for _ in range(10):
        reply = predict(server.port, [IRIS_ROW])
        assert (reply.status, reply.headers["x-model-version"]) == (200, str(target))


def test_rollback_returns_every_worker_to_the_previous_version(
    server: GunicornServer, store: Path
) -> None:
    if current_version(server) != 2:
        deploy(server, store, 2)

    assert (
        run_cli(store, "models", "rollback", "iris").strip() == "iris: production rolled back to 1"
    )
    sleep_until(deployment_changed_at(store, "iris") + SWAP_DEADLINE)

    workers = survey_workers(server.port, WORKERS)
    assert by_worker(workers) == dict.fromkeys(workers, 1)
    for _ in range(10):
        assert predict(server.port, [IRIS_ROW]).headers["x-model-version"] == "1"


def test_corrupt_version_never_serves_and_is_reported_everywhere(
    server: GunicornServer, store: Path, statsd: StatsdListener
) -> None:
    previous = current_version(server)
    version = corrupt_version(store)
    statsd.clear()
    seen_before = len(server.lines)

    run_cli(store, "models", "promote", "iris", str(version))
    sleep_until(deployment_changed_at(store, "iris") + SWAP_DEADLINE)

    show = start_cli(store, "models", "show", "iris", "--json")  # runs while we ask the workers
    try:
        workers = survey_workers(server.port, WORKERS)
        for body in workers.values():
            assert body["aliases"]["production"] == version
            assert serving_version(body) == previous
            assert "sha256" in body["problems"]["production"]
        for _ in range(10):
            reply = predict(server.port, [IRIS_ROW])
            assert (reply.status, reply.headers["x-model-version"]) == (200, str(previous))
        assert http_request(server.port, "GET", "/health/ready").status == 200

        shown = json.loads(finish_cli(show))
        assert shown["alias_status"]["production"].startswith("cannot serve: sha256 mismatch")

        failed = [
            r
            for r in server.records(seen_before)
            if r.get("event") == "load_failed" and r.get("version") == version
        ]
        assert {r["process"] for r in failed} >= set(workers)  # each worker tried once...
        assert len(failed) == len(workers)  # ...and not again on every poll
        assert all(r["level"] == "ERROR" and "sha256" in r["message"] for r in failed)
        wait_until(
            lambda: statsd.metrics().count("test.model.iris.swap.failure:1|c") >= len(workers),
            5,
            f"a swap.failure counter from each worker; got {statsd.packets()}",
        )
    finally:
        reap(show)
        deploy(server, store, previous)  # leave the server healthy for the next tests


# -- the process model ---------------------------------------------------------------------------


def test_killed_worker_is_replaced_and_serves_the_current_version(
    server: GunicornServer,
) -> None:
    version = current_version(server)
    before = survey_workers(server.port, WORKERS)
    victim = next(iter(before))

    os.kill(victim, signal.SIGKILL)

    after = wait_for_replacement(server.port, victim, WORKERS)
    assert by_worker(after) == dict.fromkeys(after, version)
    assert set(after) - set(before)  # a new pid
    assert http_request(server.port, "GET", "/health/ready").status == 200


def test_worker_restarted_after_a_bad_promote_keeps_serving_the_previous_version(
    server: GunicornServer, store: Path
) -> None:
    previous = current_version(server)
    version = corrupt_version(store)
    run_cli(store, "models", "promote", "iris", str(version))
    sleep_until(deployment_changed_at(store, "iris") + SWAP_DEADLINE)
    try:
        victim = next(iter(survey_workers(server.port, WORKERS)))
        os.kill(victim, signal.SIGKILL)
        wait_for_replacement(server.port, victim, WORKERS)

        statuses = {predict(server.port, [IRIS_ROW]).status for _ in range(40)}
        assert statuses == {200}  # not 503 from the new worker
    finally:
        deploy(server, store, previous)


# -- request bodies -------------------------------------------------------------------------------


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_body_over_the_limit_gets_413(server: GunicornServer) -> None:
    body = json.dumps({"instances": [IRIS_ROW] * 400}).encode()
    assert len(body) > 2 * MAX_BODY_BYTES

    reply = http_request(server.port, "POST", "/v1/models/iris/predict", chunks=_chunks(body, 1024))

    assert reply.status == 413, reply.raw
    assert reply.body["error"]["code"] == "payload_too_large"
    assert str(MAX_BODY_BYTES) in reply.body["error"]["message"]


def test_chunked_body_under_the_limit_is_read_whole(server: GunicornServer) -> None:
    rows = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]] * 70
    body = json.dumps({"instances": rows}).encode()
    assert MAX_BODY_BYTES / 2 < len(body) < MAX_BODY_BYTES

    reply = http_request(server.port, "POST", "/v1/models/iris/predict", chunks=_chunks(body, 97))

    assert reply.status == 200, reply.raw
    assert reply.body["predictions"] == ["setosa", "virginica"] * 70


# -- graceful shutdown ----------------------------------------------------------------------------

SLOW_MODEL = '''
"""A regressor that sleeps in predict on big batches: an in-flight request we can time."""
import pathlib
import time

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class SlowRegressor(RegressorMixin, BaseEstimator):
    def __init__(self, delay=1.0, min_rows=50, marker=""):
        self.delay = delay
        self.min_rows = min_rows
        self.marker = marker

    def fit(self, X, y):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        X = np.asarray(X, dtype=float)
        if len(X) >= self.min_rows:
            pathlib.Path(self.marker).touch()
            time.sleep(self.delay)
        return X.sum(axis=1)
'''


@pytest.fixture
def slow_server(
    tmp_path: Path, start_server: Callable[..., GunicornServer]
) -> Iterator[tuple[GunicornServer, Path]]:
    """A 1-worker server whose only model takes 1 s on 50 rows or more and touches `marker`."""
    (tmp_path / "code").mkdir()
    source = tmp_path / "code" / "e2e_slow_model.py"
    source.write_text(SLOW_MODEL)
    code = {"PYTHONPATH": str(tmp_path / "code")}  # the CLI and the server import it from there
    marker, artifact, store = tmp_path / "predicting", tmp_path / "slow.joblib", tmp_path / "store"
    _dump_slow_model(source, marker, artifact)
    run_cli(store, "models", "register", "slow", str(artifact), "--activate", env=code)
    with statsd_listener() as statsd:
        server = start_server(server_env(store, statsd.port, workers=1, extra=code))
        yield server, marker
        server.stop()


def _dump_slow_model(source: Path, marker: Path, artifact: Path) -> None:
    """Fit and joblib.dump a SlowRegressor, its class pickled as `e2e_slow_model.SlowRegressor`."""
    import joblib
    import numpy as np

    spec = importlib.util.spec_from_file_location("e2e_slow_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["e2e_slow_model"] = module  # pickle finds classes by module name
    try:
        spec.loader.exec_module(module)
        model = module.SlowRegressor(marker=str(marker)).fit(np.zeros((3, 4)), np.zeros(3))
        joblib.dump(model, artifact)
    finally:
        del sys.modules["e2e_slow_model"]


def test_sigterm_lets_the_in_flight_request_finish(
    slow_server: tuple[GunicornServer, Path],
) -> None:
    server, marker = slow_server
    rows = [[1.0, 2.0, 3.0, 4.0]] * 60
    replies: list = []
    client = threading.Thread(
        target=lambda: replies.append(predict(server.port, rows, name="slow", timeout=20))
    )
    client.start()
    wait_until(marker.exists, 10, "the slow model to start predicting")

    started = time.monotonic()
    server.signal(signal.SIGTERM)
    client.join(timeout=20)

    assert not client.is_alive()
    assert len(replies) == 1, "the in-flight request failed (see the thread exception above)"
    assert replies[0].status == 200, replies[0].raw
    assert replies[0].body["predictions"] == [10.0] * 60
    assert server.wait(timeout=15) == 0
    print(
        f"\ngraceful shutdown: in-flight request answered, master exited "
        f"{time.monotonic() - started:.2f}s after SIGTERM"
    )
