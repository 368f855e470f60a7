"""The prediction log: off the request path, sampled, bounded, pruned, safe with many writers.

Every test that touches the store runs on SQLite and on a real PostgreSQL (`database_url`)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from serving.api.state import get_state
from serving.errors import ConfigError, InvalidInput
from serving.settings import Settings
from serving.store.model_store import ModelStore
from serving.telemetry.datastore import DataStore, DataStoreError, parse_window
from serving.telemetry.feedback import Feedback, store_feedback
from serving.telemetry.predlog import SQLiteRecorder, sampled
from serving.telemetry.predlog_schema import MIGRATIONS
from serving.telemetry.recorder import PredictionRecord, Recorder
from tests.conftest import ENGINES, IRIS_ROW, engine_url

REPO = Path(__file__).resolve().parents[2]
SLOW = 3600.0  # a flush interval the tests never reach: they flush by hand


def make_record(
    request_id: str, at: float | None = None, shadow: bool = False, **overrides: object
) -> PredictionRecord:
    fields: dict[str, object] = {
        "request_id": request_id,
        "at": time.time() if at is None else at,
        "model": "iris",
        "version": 1,
        "alias": "production",
        "variant": None,
        "status": 200,
        "latency_ms": 1.5,
        "rows": 1,
        "inputs": [IRIS_ROW],
        "outputs": np.array(["setosa"], dtype=object),
        "shadow": shadow,
    }
    fields.update(overrides)
    return PredictionRecord(**fields)  # type: ignore[arg-type]


def rows_of(datastore: DataStore, sql: str) -> list[Any]:
    """What a query reads, on a fresh connection of the test (not the recorder's)."""
    reader = DataStore(datastore.data_dir, datastore.url)
    try:
        return list(reader.connect().execute(sql).fetchall())
    finally:
        reader.close()


def count(datastore: DataStore, where: str = "1 = 1") -> int:
    return int(rows_of(datastore, f"SELECT COUNT(*) FROM predictions WHERE {where}")[0][0])


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    return engine_url(request)


@pytest.fixture
def datastore(tmp_path: Path, database_url: str | None) -> Iterator[DataStore]:
    store = DataStore(tmp_path / "data", database_url)
    yield store
    store.close()


@contextlib.contextmanager
def locked_out(datastore: DataStore) -> Iterator[None]:
    """Nobody else can read or write the prediction log while this holds."""
    if datastore.url is None:
        blocker = sqlite3.connect(datastore.path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.rollback()
            blocker.close()
        return
    import psycopg

    with psycopg.connect(datastore.url) as conn:  # a transaction until the block ends
        conn.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


@pytest.fixture
def make_recorder(datastore: DataStore) -> Iterator[Callable[..., SQLiteRecorder]]:
    made: list[SQLiteRecorder] = []

    def build(**kwargs: object) -> SQLiteRecorder:
        kwargs.setdefault("flush_interval", SLOW)
        made.append(SQLiteRecorder(datastore, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield build
    for recorder in made:
        recorder.close()


def test_record_never_touches_the_database_on_the_request_path(
    datastore: DataStore, make_recorder: Callable[..., SQLiteRecorder]
) -> None:
    recorder = make_recorder()
    recorder.record(make_record("warm-up"))
    recorder.flush()
    with locked_out(datastore):
        durations = []
        for i in range(2000):
            started = time.perf_counter()
            recorder.record(make_record(f"r{i}"))
            durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 50e-6  # measured: about 0.4 µs
    assert recorder.flush() == 2000 and count(datastore) == 2001


def test_writer_thread_stores_records_as_json_within_a_flush_interval(
    datastore: DataStore, make_recorder: Callable[..., SQLiteRecorder]
) -> None:
    recorder = make_recorder(flush_interval=0.02)
    recorder.record(make_record("a", outputs=np.array(["setosa", "virginica"], dtype=object)))
    recorder.record(make_record("b", outputs=np.array([1.5, -2.0]), inputs=[{"x": 1}]))
    recorder.record(make_record("c", status=422, inputs=None, outputs=None, rows=0))
    deadline = time.monotonic() + 5
    while recorder.stats()["written"] < 3:
        assert time.monotonic() < deadline, recorder.stats()
        time.sleep(0.01)
    rows = rows_of(
        datastore, "SELECT request_id, inputs, outputs, status FROM predictions ORDER BY id"
    )
    assert [(r[0], r[3]) for r in rows] == [("a", 200), ("b", 200), ("c", 422)]
    assert json.loads(rows[0][2]) == ["setosa", "virginica"]
    assert json.loads(rows[1][1]) == [{"x": 1}] and json.loads(rows[1][2]) == [1.5, -2.0]
    assert rows[2][1] is None and rows[2][2] is None


@pytest.mark.parametrize(
    ("input_rows", "stored"), [(2, [[0], [1]]), (0, None), (100, [[i] for i in range(5)])]
)
def test_inputs_are_kept_for_the_first_rows_only(
    datastore: DataStore, make_recorder: Callable[..., SQLiteRecorder], input_rows: int, stored: Any
) -> None:
    recorder = make_recorder(input_rows=input_rows)
    outputs = np.arange(5.0)
    recorder.record(make_record("a", inputs=[[i] for i in range(5)], outputs=outputs, rows=5))
    recorder.flush()
    ((inputs, outputs_json),) = rows_of(datastore, "SELECT inputs, outputs FROM predictions")
    assert (json.loads(inputs) if inputs else None) == stored
    assert json.loads(outputs_json) == [0.0, 1.0, 2.0, 3.0, 4.0]  # outputs are always whole


def test_sampling_is_stable_per_request_id_and_keeps_shadows_with_their_primary(
    datastore: DataStore, make_recorder: Callable[..., SQLiteRecorder]
) -> None:
    ids = [f"req-{i}" for i in range(10_000)]
    kept = {rid for rid in ids if sampled(rid, 0.3)}
    assert abs(len(kept) / len(ids) - 0.3) < 0.02
    assert kept == {rid for rid in ids if sampled(rid, 0.3)}  # the same in every worker
    recorder = make_recorder(sample=0.3)
    for rid in ids[:1000]:
        recorder.record(make_record(rid))
        recorder.record(make_record(rid, shadow=True, variant="shadow", version=2))
    recorder.flush()
    primaries = count(datastore, "shadow = 0")
    assert primaries == len(kept & set(ids[:1000]))
    assert count(datastore, "shadow = 1") == primaries


def test_full_queue_drops_and_counts_instead_of_blocking(
    datastore: DataStore, make_recorder: Callable[..., SQLiteRecorder]
) -> None:
    recorder = make_recorder(queue_size=5)
    for i in range(8):
        recorder.record(make_record(f"r{i}"))
    assert recorder.stats() == {"queued": 5, "written": 0, "dropped": 3, "failed": 0}
    recorder.close()  # flushes what was queued
    assert count(datastore) == 5


def test_retention_and_row_cap_prune_the_oldest_rows(
    datastore: DataStore, make_recorder: Callable[..., SQLiteRecorder]
) -> None:
    now = 1_000_000_000.0
    recorder = make_recorder(retention_days=7, max_rows=50, clock=lambda: now)
    for i in range(30):
        recorder.record(make_record(f"old{i}", at=now - 8 * 86400))
    for i in range(70):
        recorder.record(make_record(f"new{i}", at=now - 60 + i))
    recorder.flush()
    store_feedback(datastore, [Feedback("old0", "setosa")], now - 8 * 86400)
    store_feedback(datastore, [Feedback("new69", "setosa")], now)
    assert recorder.prune() == 30 + 1 + 20
    ids = [r[0] for r in rows_of(datastore, "SELECT request_id FROM predictions ORDER BY id")]
    feedback = [r[0] for r in rows_of(datastore, "SELECT request_id FROM feedback")]
    assert ids == [f"new{i}" for i in range(20, 70)] and feedback == ["new69"]


def test_write_errors_keep_records_queued_up_to_the_bound_then_drop_and_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the data directory should be")
    lost: list[tuple[str, int]] = []
    recorder = SQLiteRecorder(
        DataStore(blocked), flush_interval=SLOW, queue_size=3, on_drop=lambda *a: lost.append(a)
    )
    try:
        recorder.record(make_record("a"))
        with caplog.at_level("WARNING"):
            assert recorder.flush() == 0
        assert "cannot write 1 records" in caplog.text
        assert recorder.stats() == {"queued": 1, "written": 0, "dropped": 0, "failed": 0}
        for i in range(4):
            recorder.record(make_record(f"b{i}"))
        assert recorder.flush() == 0
        assert recorder.stats()["queued"] == 3 and recorder.stats()["dropped"] == 2
        assert recorder.report_drops() == 2 and lost == [("predlog", 2, "db_unavailable")]
        assert recorder.report_drops() == 0  # each loss is reported once
    finally:
        recorder.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from serving.telemetry.datastore import DataStore
    from serving.telemetry.predlog import SQLiteRecorder
    from serving.telemetry.recorder import PredictionRecord

    data_dir, tag, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    url = sys.argv[5] or None
    recorder = SQLiteRecorder(DataStore(data_dir, url), flush_interval=0.005, queue_size=n)
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:  # start together
        time.sleep(0.005)
    for i in range(n):
        recorder.record(PredictionRecord(f"{tag}-{i}", time.time(), "iris", 1, "production",
                                         None, 200, 1.0, 1, [[1.0, 2.0]], ["setosa"]))
        if i % 50 == 0:
            time.sleep(0.001)
    recorder.close()
    print(recorder.stats())
    """
)


def test_processes_writing_at_once_lose_no_rows(tmp_path: Path, datastore: DataStore) -> None:
    data_dir, per_process, go = datastore.data_dir, 3000, tmp_path / "go"
    url = datastore.url or ""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(data_dir), f"p{k}", str(per_process), str(go), url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    time.sleep(1.0)  # let the interpreters start and import
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "'failed': 0" in out and "'dropped': 0" in out, out
    distinct = rows_of(datastore, "SELECT COUNT(DISTINCT request_id) FROM predictions")[0]
    if datastore.url is None:
        assert rows_of(datastore, "PRAGMA journal_mode")[0][0] == "wal"
    assert distinct[0] == 3 * per_process


def _session(datastore: DataStore) -> int:
    """Which connection this is: the Python object (SQLite), the server process (PostgreSQL)."""
    conn = datastore.connect()
    if datastore.url is None:
        return id(conn)
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def _child_writes(datastore: DataStore, parent_session: int) -> None:
    recorder = SQLiteRecorder(datastore, flush_interval=SLOW)
    if _session(datastore) == parent_session:
        raise SystemExit(3)  # the child must never use its parent's connection
    for i in range(100):
        recorder.record(make_record(f"child{i}"))
    recorder.close()
    raise SystemExit(0 if recorder.stats()["written"] == 100 else 4)


def test_a_forked_worker_opens_its_own_connection(datastore: DataStore) -> None:
    datastore.ensure_schema("predlog", MIGRATIONS)
    parent = datastore.connect()
    child = multiprocessing.get_context("fork").Process(
        target=_child_writes, args=(datastore, _session(datastore))
    )
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert datastore.connect() is parent  # and it still works: the child left it alone
    assert parent.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 100


def test_schema_versions_are_recorded_and_a_newer_schema_is_refused(
    tmp_path: Path, database_url: str | None
) -> None:
    first = DataStore(tmp_path, database_url)
    first.ensure_schema("predlog", MIGRATIONS)
    row = (
        first.connect()
        .execute("SELECT version FROM schema_version WHERE component = 'predlog'")
        .fetchone()
    )
    assert row == (len(MIGRATIONS),)
    first.connect().execute("UPDATE schema_version SET version = 99")
    first.close()
    second = DataStore(tmp_path, database_url)
    with pytest.raises(DataStoreError, match="newer"):
        second.ensure_schema("predlog", MIGRATIONS)
    second.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("24h", 86400), ("7d", 604800), ("1.5h", 5400)],
    ids=["seconds", "minutes", "hour", "day-in-hours", "week-in-days", "fraction"],
)
def test_parse_window(text: str, seconds: float) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "-1h", "1y", "h", "400d"])
def test_parse_window_refuses_nonsense(text: str) -> None:
    with pytest.raises(InvalidInput, match="bad window"):
        parse_window(text)


def test_log_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "SERVING_DATA_DIR": "/srv/data",
            "SERVING_LOG_SAMPLE": "0.25",
            "SERVING_LOG_RETENTION_DAYS": "3",
            "SERVING_LOG_MAX_ROWS": "5000",
        }
    )
    assert settings.data_dir == Path("/srv/data") and settings.log_sample == 0.25
    assert settings.log_retention_days == 3 and settings.log_max_rows == 5000
    defaults = Settings.from_env({})
    assert defaults.data_dir == Path("data") and defaults.log_sample == 1.0
    assert (defaults.log_retention_days, defaults.log_max_rows) == (7.0, 1_000_000)
    with pytest.raises(ConfigError, match="SERVING_LOG_SAMPLE"):
        Settings.from_env({"SERVING_LOG_SAMPLE": "1.5"})


def test_app_logs_each_prediction_with_its_routing(
    served: ModelStore, make_app: Callable[..., Flask], settings: Settings
) -> None:
    app = make_app()
    client = app.test_client()
    ok = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW, IRIS_ROW]})
    bad = client.post("/v1/models/iris/predict", json={"instances": [[1.0]]})
    pinned = client.post("/v1/models/diabetes/versions/1/predict", json={"instances": [[0.0] * 10]})
    assert (ok.status_code, bad.status_code, pinned.status_code) == (200, 422, 200)
    get_state(app).close()
    rows = rows_of(
        DataStore(settings.data_dir, settings.database_url),
        "SELECT request_id, model, version, alias, status, rows, inputs, outputs"
        " FROM predictions ORDER BY id",
    )
    assert rows[0][:6] == (ok.get_json()["request_id"], "iris", 1, "production", 200, 2)
    assert json.loads(rows[0][6]) == [IRIS_ROW, IRIS_ROW]
    assert json.loads(rows[0][7]) == ok.get_json()["predictions"]
    assert rows[1][4:] == (422, 0, None, None)
    assert rows[2][1:4] == ("diabetes", 1, None)  # a pinned version has no alias


def test_sample_zero_turns_the_log_off(
    served: ModelStore, make_app: Callable[..., Flask], settings: Settings
) -> None:
    app = make_app(log_sample=0.0)
    assert type(get_state(app).recorder) is Recorder
    client = app.test_client()
    assert client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]}).status_code == 200
    response = client.post("/v1/feedback", json={"request_id": "x", "label": "setosa"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "prediction_log_off"
    assert not settings.data_dir.exists()
