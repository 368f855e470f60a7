"""The telemetry database setting, and what the app does while PostgreSQL is down: predictions
answered, telemetry buffered up to a bound then dropped and counted, reads a 503, reconnection
backed off, writing resumed. A real PostgreSQL server of the test's own is stopped and started."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from serving.api.state import get_state
from serving.errors import ConfigError
from serving.monitoring.counts import COMPONENT as MONITOR
from serving.monitoring.counts import MIGRATIONS as MONITOR_MIGRATIONS
from serving.settings import Settings
from serving.store.model_store import ModelStore
from serving.telemetry import predlog
from serving.telemetry.datastore import DataStore, DataStoreError
from serving.telemetry.engines import mask_url
from serving.telemetry.predlog import SQLiteRecorder
from serving.telemetry.predlog_schema import COMPONENT, MIGRATIONS
from tests import pg
from tests.conftest import IRIS_ROW
from tests.telemetry.test_prometheus import scrape

BOUND = 50  # the prediction log's queue in these tests: an outage fills it fast


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@db.example:5432/serving", "postgres://u@localhost/serving"],
    ids=["postgresql", "postgres"],
)
def test_database_url_selects_postgresql(url: str) -> None:
    settings = Settings.from_env({"SERVING_DATABASE_URL": url})
    assert settings.database_url == url and "u:p@" not in repr(settings)
    assert Settings.from_env({}).database_url is None
    assert Settings.from_env({"SERVING_DATABASE_URL": " "}).database_url is None


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@db/serving", "hunter2", "sqlite:///hunter2.db"], ids=str
)
def test_a_database_url_of_another_kind_is_refused_without_its_secret(url: str) -> None:
    with pytest.raises(ConfigError, match="SERVING_DATABASE_URL") as caught:
        Settings.from_env({"SERVING_DATABASE_URL": url})
    assert "hunter2" not in str(caught.value)


def test_mask_url_hides_the_password_only() -> None:
    assert mask_url("postgresql://u:s3cret@h:5432/db?sslmode=require") == (
        "postgresql://u:***@h:5432/db?sslmode=require"
    )
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_reconnection_backs_off_and_never_logs_the_password(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://u:{pg.PASSWORD}@127.0.0.1:{pg.free_port()}/db"  # nobody listens
    datastore = DataStore(tmp_path, url)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DataStoreError, match="unavailable"):
            datastore.connect()
        attempts = caplog.text.count("unreachable")
        with pytest.raises(DataStoreError):
            datastore.connect()  # within the back-off: no new attempt
        assert caplog.text.count("unreachable") == attempts == 1
        time.sleep(0.6)
        with pytest.raises(DataStoreError):
            datastore.connect()
    assert "next attempt in 0.5 s" in caplog.text and "next attempt in 1.0 s" in caplog.text
    assert pg.PASSWORD not in caplog.text and "u:***@127.0.0.1" in caplog.text
    datastore.close()


def test_replicas_migrating_one_new_database_at_once_do_not_collide(
    tmp_path: object, postgres_url: str
) -> None:
    """Every worker of every replica starts by applying the migrations: an advisory lock makes
    them take turns (without it, concurrent CREATE TABLEs fail on PostgreSQL's catalogue)."""
    stores = [DataStore(tmp_path, postgres_url) for _ in range(6)]  # type: ignore[arg-type]
    start, errors = threading.Barrier(len(stores)), []

    def migrate(store: DataStore) -> None:
        try:
            start.wait()
            store.ensure_schema(COMPONENT, MIGRATIONS)
            store.ensure_schema(MONITOR, MONITOR_MIGRATIONS)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        versions = stores[0].connect().execute("SELECT component, version FROM schema_version")
        assert dict(versions.fetchall()) == {COMPONENT: 1, MONITOR: len(MONITOR_MIGRATIONS)}
    finally:
        for store in stores:
            store.close()


def test_a_connection_the_server_ended_is_replaced_and_its_batch_kept(
    tmp_path: object, postgres_url: str
) -> None:
    import psycopg

    from tests.telemetry.test_predlog import make_record

    datastore = DataStore(tmp_path, postgres_url)  # type: ignore[arg-type]
    recorder = SQLiteRecorder(datastore, flush_interval=3600)
    try:
        recorder.record(make_record("before"))
        assert recorder.flush() == 1
        backend = datastore.connect().execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        recorder.record(make_record("after"))
        assert recorder.flush() == 0  # the write found its connection gone: kept
        assert recorder.stats()["queued"] == 1
        assert recorder.flush() == 1  # on a new connection
        assert datastore.connect().execute("SELECT pg_backend_pid()").fetchone()[0] != backend
        assert recorder.stats() == {"queued": 0, "written": 2, "dropped": 0, "failed": 0}
    finally:
        recorder.close()


@pytest.fixture
def own_cluster() -> Iterator[pg.Cluster]:
    """A PostgreSQL server of this test alone: it is stopped and started again."""
    with pg.cluster_or_skip() as cluster:
        yield cluster


def _predict(app: Flask, n: int) -> None:
    client = app.test_client()
    for _ in range(n):
        response = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
        assert response.status_code == 200  # whatever the database does


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_database_down_answers_predictions_buffers_drops_counts_and_resumes(
    served: ModelStore,
    make_app: Callable[..., Flask],
    own_cluster: pg.Cluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(predlog, "QUEUE_SIZE", BOUND)
    url = own_cluster.database()
    app = make_app(database_url=url, monitor_flush=0.2)
    recorder = get_state(app).recorder
    assert isinstance(recorder, SQLiteRecorder)
    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        _predict(app, 30)
        _wait(lambda: recorder.stats()["written"] == 30, "the first writes")
        own_cluster.stop("fast")
        _predict(app, 4 * BOUND)
        _wait(lambda: recorder.stats()["dropped"] > 0, "the bound to be exceeded")
        _wait(
            lambda: _dropped_metric(scrape(client)) >= recorder.stats()["dropped"],
            "the drop metric",
        )  # fmt: skip
        for path in ("/v1/models/iris/ab", "/v1/models/iris/monitoring", "/v1/dashboard/data"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.get_json())
            assert response.get_json()["error"]["code"] == "data_store_unavailable"
        feedback = client.post("/v1/feedback", json={"request_id": "x", "label": "setosa"})
        assert feedback.status_code == 503
        own_cluster.start()
        _predict(app, 10)
        _wait(lambda: recorder.stats()["queued"] == 0, "the buffer to be written")
        _wait(lambda: client.get("/v1/models/iris/ab").status_code == 200, "reads again")
    stats = recorder.stats()
    kept = 4 * BOUND + 10 - stats["dropped"]  # the buffer: the bound, and what came after
    assert stats["failed"] == 0 and BOUND <= kept <= BOUND + 10
    body = client.get("/v1/models/iris/ab?window=1h").get_json()
    assert sum(v["requests"] for v in body["variants"]) == 30 + kept
    traffic = client.get("/v1/dashboard/data?window=15m").get_json()["totals"]["requests"]
    assert traffic == 30 + 4 * BOUND + 10  # counts are kept whole through a short outage
    assert "unreachable" in caplog.text and "records lost" in caplog.text
    assert pg.PASSWORD not in caplog.text


def _dropped_metric(samples: list[Any]) -> float:
    """serving_telemetry_dropped_total of the prediction log, every reason summed."""
    return sum(
        s.value
        for s in samples
        if s.name == "serving_telemetry_dropped_total" and s.labels["component"] == "predlog"
    )
