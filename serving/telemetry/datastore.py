"""The embedded data store: one SQLite database in WAL mode under `SERVING_DATA_DIR`.

Shared by every gunicorn worker, the CLI and each component that keeps data (the prediction
log and feedback here; monitoring buckets can add their own tables). WAL lets readers run while
a writer commits; writers from many processes take turns behind `busy_timeout`, so components
batch their writes into few, short transactions.

A connection is never shared between processes or threads: `connect()` opens one per
(process, thread) on first use, so nothing is opened at import or in the gunicorn master.
Each component declares its tables as numbered migrations (`ensure_schema`); the version each
component reached is kept in the `schema_version` table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from serving.errors import InvalidInput, ServingError

log = logging.getLogger(__name__)

DB_FILE = "serving.db"
# How long a writer waits for another process's transaction before giving up (ms). Writes are
# batched by background threads, so a wait here never holds up a prediction.
BUSY_TIMEOUT_MS = 10_000
# A migration is a list of SQL statements applied in one transaction.
Migration = Sequence[str]

WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WINDOW_SECONDS = 366 * 86400


class DataStoreError(ServingError):
    """The data directory cannot be used (unwritable, corrupt, or written by newer code)."""

    status_code = 503
    code = "data_store_unavailable"


class DataStore:
    """One database file; cheap to build, opens nothing until `connect()`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        # Connections inherited through fork() are kept referenced and never touched: closing
        # a copy of another process's SQLite handle could disturb that process's locks.
        self._inherited: list[sqlite3.Connection] = []
        self._schemas: set[tuple[int, str]] = set()

    def exists(self) -> bool:
        """Whether anything was ever written here (readers check before creating files)."""
        return self.path.is_file()

    def connect(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened (and the file created) on first use."""
        pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        with self._lock:
            if any(p != pid for p, _ in self._connections):
                self._inherited.extend(c for p, c in self._connections if p != pid)
                self._connections = [(p, c) for p, c in self._connections if p == pid]
                self._schemas = {key for key in self._schemas if key[0] == pid}
        conn = self._open()
        self._local.conn, self._local.pid = conn, pid
        with self._lock:
            self._connections.append((pid, conn))
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; `transaction()` says BEGIN itself.
            # check_same_thread=False only so `close()` may close it from another thread.
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except OSError as exc:  # the message leaves out the path: it may reach a client
            raise DataStoreError(f"cannot open the data store: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot open the data store: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against a crashed process in WAL mode; a power cut may lose
            # the last commits, which a prediction log can afford.
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise DataStoreError(f"cannot use the data store: {exc}") from None
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` (take the write lock up front, no upgrade deadlock) ... COMMIT."""
        conn = self.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """SQLite failures (locked too long, disk full, corrupt) as DataStoreError (a 503)."""
        try:
            yield
        except sqlite3.Error as exc:
            log.error("data store %s: %s", self.path, exc)
            raise DataStoreError(f"the data store failed: {exc}") from None

    def ensure_schema(self, component: str, migrations: Sequence[Migration]) -> None:
        """Apply the migrations of `component` this database has not seen (once per process)."""
        key = (os.getpid(), component)
        if key in self._schemas:
            return
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = conn.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise DataStoreError(
                    f"the data store's {component} schema is version {current}, newer than "
                    f"this code knows ({len(migrations)}): upgrade the server"
                )
            for statements in migrations[current:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO schema_version (component, version) VALUES (?, ?)",
                (component, len(migrations)),
            )
        self._schemas.add(key)

    def close(self) -> None:
        """Close this process's connections (every thread's); later calls reopen."""
        pid = os.getpid()
        with self._lock:
            mine = [c for p, c in self._connections if p == pid]
            self._connections = [(p, c) for p, c in self._connections if p != pid]
            self._schemas = {key for key in self._schemas if key[0] != pid}
        for conn in mine:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def parse_window(text: str) -> float:
    """`"90s"`, `"30m"`, `"1h"`, `"7d"`, `"2w"` (or bare seconds) into seconds; InvalidInput."""
    match = WINDOW_RE.match(text)
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise InvalidInput(
            f"bad window {text!r}: use a duration like 90s, 30m, 1h, 24h or 7d (at most 366d)",
            {"window": ["a duration like 30m, 1h, 24h or 7d"]},
        )
    return seconds
