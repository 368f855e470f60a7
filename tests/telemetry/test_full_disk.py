"""The prediction log on a real, small filesystem (a tmpfs of a few MiB) that fills and then
has its space back: predictions answered, every lost record counted (StatsD, Prometheus, the
log status of `GET /v1/models/<name>` and `/v1/dashboard/data`), then logging, pruning and
feedback recover by themselves. Mounting needs root; elsewhere the test skips and says so."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from serving.api.state import get_state
from serving.store.model_store import ModelStore
from serving.telemetry import predlog
from serving.telemetry.datastore import DataStore
from serving.telemetry.predlog import SQLiteRecorder
from serving.telemetry.predlog_schema import COMPONENT, MIGRATIONS
from tests.conftest import IRIS_ROW
from tests.e2e.conftest import statsd_listener
from tests.mounts import fill, tmpfs
from tests.telemetry.test_prometheus import scrape

SIZE = "4m"
BOUND = 50  # the prediction log's queue: a full disk fills it fast


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", SIZE) as mount:
        yield mount


def _wait(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _dropped(samples: list, reason: str | None = None) -> float:
    """serving_telemetry_dropped_total of the prediction log (one reason, or all summed)."""
    return sum(
        s.value for s in samples
        if s.name == "serving_telemetry_dropped_total" and s.labels["component"] == "predlog"
        and reason in (None, s.labels["reason"])
    )  # fmt: skip


def test_a_full_data_disk_loses_counted_records_and_recovers_when_space_returns(
    served: ModelStore,
    make_app: Callable[..., Flask],
    small_fs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(predlog, "QUEUE_SIZE", BOUND)
    with statsd_listener() as statsd:
        app = make_app(
            data_dir=small_fs, database_url=None, statsd_host="127.0.0.1",
            statsd_port=statsd.port, statsd_prefix="t",
        )  # fmt: skip
        recorder = get_state(app).recorder
        assert isinstance(recorder, SQLiteRecorder)
        client = app.test_client()

        def predict() -> str:
            reply = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW] * 50})
            assert reply.status_code == 200  # whatever the disk does
            return str(reply.get_json()["request_id"])

        predict()
        _wait(lambda: recorder.stats()["written"] == 1, "the first record")
        for path in ("/v1/dashboard/data", "/v1/models/iris/ab"):  # every table made once
            assert client.get(path).status_code == 200
        filler = fill(small_fs)
        reader = DataStore(small_fs, None)  # a store opened now (a request's) reads on
        try:
            reader.ensure_schema(COMPONENT, MIGRATIONS)  # up to date: writes nothing
        finally:
            reader.close()
        predict()
        assert recorder.flush() == 0  # the first write on the full disk fails (not timing)
        assert recorder.status()["reason"] == "disk_full"
        for _ in range(6 * BOUND):
            predict()
        _wait(lambda: recorder.status()["dropped"] > 0, "records to be lost")

        def shown() -> dict:
            return client.get("/v1/models/iris").get_json()["log"]  # type: ignore[no-any-return]

        _wait(lambda: shown()["reason"] == "disk_full", "the log status to name the full disk")
        assert shown()["status"] == "degraded"
        board = client.get("/v1/dashboard/data")
        assert board.status_code == 200, board.get_json()
        assert board.get_json()["log"]["status"] == "degraded"
        lost = recorder.status()["dropped"]
        _wait(lambda: _dropped(scrape(client)) >= lost, "the Prometheus counter")
        assert _dropped(scrape(client), "disk_full") > 0  # before the first failure: queue_full
        counter = "t.telemetry.dropped.predlog.disk_full:"
        _wait(lambda: any(m.startswith(counter) for m in statsd.metrics()), "the StatsD counter")

        filler.unlink()  # the operator frees space: nothing restarted, nothing reconfigured
        _wait(lambda: recorder.stats()["queued"] == 0, "the buffered records to be written")
        fresh = predict()
        _wait(lambda: recorder.stats()["queued"] == 0, "a new record to be written")
        feedback = client.post("/v1/feedback", json={"request_id": fresh, "label": "setosa"})
        assert feedback.status_code == 200, feedback.get_json()
        assert feedback.get_json()["accepted"] == 1, (feedback.get_json(), recorder.stats())
        recorder.prune()  # the retention pass works again (and gives space back)
        assert client.get("/v1/models/iris/ab?window=1h").status_code == 200
    stats = recorder.stats()
    assert stats["failed"] == 0
    print(f"\nfull {SIZE} tmpfs: {lost} records lost and counted, then logging resumed")
