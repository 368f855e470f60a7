"""The byte bound of the prediction log: pruned under SERVING_LOG_MAX_BYTES, space given back.

SQLite: the file itself shrinks (incremental vacuum, WAL truncated). PostgreSQL: the tables
stay near the bound however many rows pass through them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.settings import Settings
from serving.telemetry.datastore import DataStore
from serving.telemetry.predlog import SQLiteRecorder
from tests.conftest import ENGINES, engine_url
from tests.telemetry.test_predlog import SLOW, count, make_record

WIDE_ROW = [round(0.1 * i, 3) for i in range(40)]


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    return engine_url(request)


@pytest.fixture
def datastore(tmp_path: Path, database_url: str | None) -> Iterator[DataStore]:
    store = DataStore(tmp_path / "data", database_url)
    yield store
    store.close()


def fill(recorder: SQLiteRecorder, rows: int, start: int = 0) -> None:
    for i in range(start, start + rows):
        outputs = np.full(10, 0.5 + i)
        recorder.record(make_record(f"r{i}", inputs=[WIDE_ROW] * 10, rows=10, outputs=outputs))
    recorder.flush()


def on_disk(datastore: DataStore) -> int:
    """The bytes of the SQLite file and its WAL."""
    wal = datastore.path.with_name(datastore.path.name + "-wal")
    return datastore.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_sqlite_file_shrinks_under_the_byte_bound_after_pruning(tmp_path: Path) -> None:
    datastore = DataStore(tmp_path / "data")
    recorder = SQLiteRecorder(datastore, max_bytes=1024**3, flush_interval=SLOW)
    fill(recorder, 3000)
    peak = on_disk(datastore)
    bound = peak // 4
    recorder = SQLiteRecorder(datastore, max_bytes=bound, flush_interval=SLOW)
    assert recorder.prune() > 0
    kept = count(datastore)
    assert 0 < kept < 3000
    assert on_disk(datastore) <= bound, (peak, on_disk(datastore), bound)
    assert datastore.engine.used_bytes(datastore.connect()) <= bound
    recorder.close()


def test_byte_bound_holds_while_rows_keep_coming(datastore: DataStore) -> None:
    recorder = SQLiteRecorder(datastore, max_bytes=1024**3, flush_interval=SLOW)
    fill(recorder, 1000)
    bound = datastore.engine.used_bytes(datastore.connect())
    recorder = SQLiteRecorder(datastore, max_bytes=bound, flush_interval=SLOW)
    sizes = []
    for round_ in range(1, 6):
        fill(recorder, 500, start=1000 * round_)
        recorder.prune()
        sizes.append(datastore.engine.used_bytes(datastore.connect()))
        assert sizes[-1] <= bound, sizes
    assert count(datastore) > 300
    if datastore.url is not None:  # the tables' files reuse the room vacuumed
        total = (
            datastore.connect()
            .execute("SELECT pg_total_relation_size('predictions')")
            .fetchone()[0]
        )
        assert total <= 2.5 * bound, (total, bound)
    else:
        assert on_disk(datastore) <= bound
    recorder.close()


def test_an_older_file_is_migrated_to_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "data" / "serving.db"
    path.parent.mkdir()
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE t (x TEXT)")
    old.executemany("INSERT INTO t VALUES (?)", [("x" * 100,)] * 1000)
    old.commit()
    assert old.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    old.close()
    datastore = DataStore(tmp_path / "data")
    conn = datastore.connect()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1000
    datastore.close()


def test_settings_read_the_byte_bound() -> None:
    assert Settings.from_env({}).log_max_bytes == 1024**3
    assert Settings.from_env({"SERVING_LOG_MAX_BYTES": "2097152"}).log_max_bytes == 2 * 1024**2


@pytest.mark.parametrize(
    ("inputs", "stored"),
    [
        (
            [{"a": 1.5, "b": "x"}, {"a": 2.0, "b": None}],
            {"columns": ["a", "b"], "data": [[1.5, "x"], [2.0, None]]},
        ),
        ([{"a": 1.5}], [{"a": 1.5}]),
        ([{"a": 1}, {"b": 2}], [{"a": 1}, {"b": 2}]),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], [{"a": 1, "b": 2}, {"b": 2, "a": 1}]),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]),
    ],
    ids=["same-keys", "one-instance", "other-keys", "other-order", "arrays"],
)
def test_objects_are_stored_as_columns_without_losing_a_value(
    tmp_path: Path, inputs: list[object], stored: object
) -> None:
    datastore = DataStore(tmp_path / "data")
    recorder = SQLiteRecorder(datastore, flush_interval=SLOW)
    recorder.record(make_record("r", inputs=inputs, rows=len(inputs)))
    recorder.flush()
    text = datastore.connect().execute("SELECT inputs FROM predictions").fetchone()[0]
    assert json.loads(text) == stored and ", " not in text and ": " not in text
    recorder.close()


def test_outputs_of_a_big_request_are_bounded(datastore: DataStore) -> None:
    recorder = SQLiteRecorder(datastore, output_rows=100, flush_interval=SLOW)
    recorder.record(make_record("big", rows=5000, outputs=np.arange(5000.0), inputs=None))
    recorder.flush()
    (text,) = datastore.connect().execute("SELECT outputs FROM predictions").fetchone()
    assert json.loads(text) == list(range(100)) and count(datastore, "rows = 5000") == 1
    recorder.close()
