"""Background writers under gevent: a prediction log commit stuck in SQLite (another process
holds the database's lock) must not stall the worker's other greenlets, which serve requests.

gevent monkey-patches the whole process, so the gevent side runs in a child Python."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from serving.telemetry.datastore import DB_FILE
from serving.telemetry.threads import gevent_patched, start_daemon
from tests.conftest import ENGINES

# The child: patch like gunicorn's gevent worker, queue one record (its writer then blocks on
# the lock the parent holds), and measure how late a 10 ms gevent.sleep wakes meanwhile.
_CHILD = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    from pathlib import Path
    import gevent
    from serving.telemetry.datastore import DataStore
    from serving.telemetry.predlog import SQLiteRecorder
    from serving.telemetry.recorder import PredictionRecord

    recorder = SQLiteRecorder(DataStore(Path(sys.argv[1])), flush_interval=0.05)
    record = PredictionRecord("r1", time.time(), "m", 1, None, None, 200, 1.0, 1, [[1]], [0])
    recorder.record(record)
    print("ready", flush=True)
    worst, until = 0.0, time.monotonic() + 1.5
    while time.monotonic() < until:
        started = time.monotonic()
        gevent.sleep(0.01)
        worst = max(worst, time.monotonic() - started)
    for _ in range(500):  # the parent let go of the lock: the record is written
        if recorder.written:
            break
        gevent.sleep(0.01)
    print(json.dumps({"worst_wake_s": worst, "written": recorder.written}), flush=True)
    """
)


def test_a_blocked_commit_does_not_stall_greenlets_under_gevent(tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a slow commit of another process, for 2 s
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(2.0)
        holder.execute("ROLLBACK")
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        holder.close()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["written"] == 1, result
    # A writer on the hub's thread would hold every greenlet until the lock went (~2 s).
    assert result["worst_wake_s"] < 0.5, result


def test_without_gevent_a_daemon_is_a_plain_thread() -> None:
    assert not gevent_patched()
    done = threading.Event()
    daemon = start_daemon(done.set, "test-daemon")
    daemon.join(timeout=5)
    assert done.is_set() and not daemon.is_alive()
    assert isinstance(daemon, threading.Thread) and daemon.daemon


# The child: 50 greenlets (as 50 client connections of a gevent worker) each use the store
# once and end; then the SQLite files this process holds open are counted.
_READERS = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import os, sys
    from pathlib import Path
    import gevent
    from serving.telemetry.datastore import DataStore

    store = DataStore(Path(sys.argv[1]))
    with store.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    for _ in range(50):
        gevent.spawn(lambda: store.connect().execute("SELECT count(*) FROM t")).join()
    store.connect()  # a new greenlet-less use: the ended greenlets' connections are closed
    held = 0
    for fd in os.listdir("/proc/self/fd"):  # the listing's own descriptor is gone by now
        if os.path.exists(f"/proc/self/fd/{fd}"):
            held += os.readlink(f"/proc/self/fd/{fd}").endswith("serving.db")
    print(held, flush=True)
    """
)


def test_connections_of_ended_greenlets_are_closed(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _READERS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # The main greenlet's connection and the last reader's at most: not one per greenlet.
    assert int(out.strip().splitlines()[-1]) <= 3, out


# The child: 50 greenlets one after another, as a gevent worker's client connections, each
# reads once; prints how many connections the store opened.
_SEQUENTIAL = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import sys
    from pathlib import Path
    import gevent
    from serving.telemetry.datastore import DataStore

    store = DataStore(Path(sys.argv[1]), sys.argv[2] or None)
    opened = []
    for name in ("_open", "_open_postgres"):
        real = getattr(store, name)
        setattr(store, name, lambda *a, real=real: opened.append(1) or real(*a))
    with store.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    for _ in range(50):
        gevent.spawn(lambda: store.connect().execute("SELECT count(*) FROM t")).join()
    print(len(opened), flush=True)
    """
)


@pytest.mark.parametrize("engine", ENGINES)
def test_greenlets_one_after_another_reuse_a_connection(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if engine == "postgresql" else ""
    out = subprocess.run(
        [sys.executable, "-c", _SEQUENTIAL, str(tmp_path), url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # The main greenlet's and one handed from greenlet to greenlet: not a connect per client.
    assert int(out.strip().splitlines()[-1]) == 2, out
