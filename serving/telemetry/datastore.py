"""The data store: one SQLite database in WAL mode under `SERVING_DATA_DIR`, or PostgreSQL.

Shared by every gunicorn worker, the CLI and each component that keeps data (the prediction
log and feedback here; monitoring buckets can add their own tables). WAL lets readers run while
a writer commits; writers from many processes take turns behind `busy_timeout`, so components
batch their writes into few, short transactions. With `SERVING_DATABASE_URL` the same tables
live in one PostgreSQL database every replica writes to (`serving.telemetry.engines` holds
what differs between the two engines).

A connection is never shared between processes or threads: `connect()` opens one per
(process, thread) on first use, so nothing is opened at import or in the gunicorn master.
Under gevent workers a "thread" is a greenlet (one per client connection): the connection of a
greenlet or thread that ended is handed to the next one on the same OS thread (up to IDLE_MAX
kept idle per process, the rest closed), so they neither pile up nor cost a connect (a
PostgreSQL handshake) per client connection.
A PostgreSQL connection that broke (the server restarted) is replaced on the next use; while
the server cannot be reached, connection attempts back off exponentially (capped) and fail
fast in between with DataStoreError, which writers treat as "keep it for later".
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
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from greenlet import getcurrent

from serving.errors import InvalidInput, ServingError
from serving.telemetry.engines import Engine, PostgresEngine, mask_url

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
# Seconds between two attempts to reach an unreachable database: doubled per failure, capped.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
# Connections of ended greenlets or threads kept for the next one, per process (gevent workers
# serve each client connection in a greenlet of its own: without this, a connect per client).
IDLE_MAX = 4


class DataStoreError(ServingError):
    """The data directory cannot be used (unwritable, corrupt, or written by newer code)."""

    status_code = 503
    code = "data_store_unavailable"


class DataStore:
    """One database (a file, or PostgreSQL at `url`); cheap to build, opens nothing until
    `connect()`."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self.url = url
        self.engine: Engine = PostgresEngine() if url else Engine()
        # Where the data lives, for logs and messages: never the password.
        self.where = mask_url(url) if url else str(self.path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, Any]] = []
        # Who uses each of this process's connections (a thread's or a request's greenlet),
        # and on which OS thread: (pid, OS thread, owner, connection).
        self._owners: list[tuple[int, int, weakref.ref[Any], Any]] = []
        # Connections whose owner ended, for the next owner on the same OS thread.
        self._idle: list[tuple[int, int, Any]] = []
        # Connections inherited through fork() are kept referenced and never touched: closing
        # a copy of another process's SQLite handle could disturb that process's locks, and
        # closing a PostgreSQL one would end the parent's session.
        self._inherited: list[Any] = []
        self._schemas: set[tuple[int, str]] = set()
        self._retry_at, self._backoff = 0.0, 0.0

    def exists(self) -> bool:
        """Whether anything was ever written here (readers check before creating files)."""
        return self.url is not None or self.path.is_file()

    def connect(self) -> Any:
        """This thread's connection in this process, opened (and the file created) on first use:
        an sqlite3 connection, or a `PostgresConnection` that takes the same statements."""
        pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            if not getattr(conn, "dead", False):
                return conn
            self._forget(conn)
        with self._lock:
            if any(p != pid for p, _ in self._connections):
                self._inherited.extend(c for p, c in self._connections if p != pid)
                self._connections = [(p, c) for p, c in self._connections if p == pid]
                self._schemas = {key for key in self._schemas if key[0] == pid}
                self._idle = [entry for entry in self._idle if entry[0] == pid]
        thread = threading.get_native_id()
        self._reap(pid)
        conn = self._take_idle(pid, thread)
        if conn is None:
            conn = self._open() if self.url is None else self._open_postgres(self.url)
            with self._lock:
                self._connections.append((pid, conn))
        self._local.conn, self._local.pid = conn, pid
        with self._lock:
            self._owners.append((pid, thread, weakref.ref(getcurrent()), conn))
        return conn

    def _take_idle(self, pid: int, thread: int) -> Any:
        """An idle connection of this process opened on this OS thread, or None."""
        with self._lock:
            index = next(
                (i for i, (p, t, _) in enumerate(self._idle) if p == pid and t == thread), None
            )
            if index is None:
                return None
            conn = self._idle.pop(index)[2]
        if getattr(conn, "dead", False):  # a PostgreSQL session that broke while idle
            self._forget(conn)
            return None
        return conn

    def _reap(self, pid: int) -> None:
        """Keep for reuse (up to IDLE_MAX) or close this process's connections whose greenlet
        or thread has ended."""
        with self._lock:
            mine = [entry for entry in self._owners if entry[0] == pid]
            gone = [(thread, conn) for _, thread, owner, conn in mine if _ended(owner)]
            if not gone:
                return
            ids = {id(conn) for _, conn in gone}
            self._owners = [entry for entry in self._owners if id(entry[3]) not in ids]
            room = IDLE_MAX - sum(1 for p, _, _ in self._idle if p == pid)
            kept, closing = gone[: max(room, 0)], [conn for _, conn in gone[max(room, 0) :]]
            self._idle.extend((pid, thread, conn) for thread, conn in kept)
            closed = {id(conn) for conn in closing}
            self._connections = [(p, c) for p, c in self._connections if id(c) not in closed]
        for conn in closing:
            with contextlib.suppress(Exception):
                conn.close()

    def backing_off(self) -> bool:
        """True while waiting to try an unreachable database again: writers keep their data
        as it is instead of preparing a write that would fail."""
        return time.monotonic() < self._retry_at

    def _forget(self, conn: Any) -> None:
        """Drop this thread's broken connection (the server restarted or went away)."""
        self._local.conn = None
        with self._lock:
            self._connections = [(p, c) for p, c in self._connections if c is not conn]
            self._owners = [entry for entry in self._owners if entry[3] is not conn]
        with contextlib.suppress(Exception):
            conn.close()

    def _open_postgres(self, url: str) -> Any:
        """A new connection, or DataStoreError at once while backing off from a failure."""
        assert isinstance(self.engine, PostgresEngine)
        if time.monotonic() < self._retry_at:
            raise DataStoreError("the telemetry database is unavailable (retrying)")
        try:
            conn = self.engine.connect(url)
        except Exception as exc:
            with self._lock:
                self._backoff = min(max(RETRY_MIN_S, 2 * self._backoff), RETRY_MAX_S)
                self._retry_at = time.monotonic() + self._backoff
            log.warning(
                "data store %s unreachable, next attempt in %.1f s: %s",
                self.where,
                self._backoff,
                str(exc).replace(url, self.where),
            )
            raise DataStoreError("the telemetry database is unavailable") from None
        if self._backoff:
            log.warning("data store %s reachable again", self.where)
        self._retry_at, self._backoff = 0.0, 0.0
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
            _incremental_vacuum(conn)  # before WAL mode: a new file gets it with its header
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against a crashed process in WAL mode; a power cut may lose
            # the last commits, which a prediction log can afford.
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise DataStoreError(f"cannot use the data store: {exc}") from None
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """`BEGIN IMMEDIATE` (SQLite: take the write lock up front, no upgrade deadlock) or
        `BEGIN` (PostgreSQL) ... COMMIT."""
        conn = self.connect()
        conn.execute(self.engine.begin)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(*self.engine.errors):  # a broken connection cannot
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def transient(self, exc: BaseException) -> bool:
        """Whether a failed write may succeed later: keep its data and try again."""
        return isinstance(exc, DataStoreError) or self.engine.transient(exc)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Driver failures (locked too long, disk full, corrupt, server down) as
        DataStoreError (a 503)."""
        try:
            yield
        except self.engine.errors as exc:
            log.error("data store %s: %s", self.where, exc)
            if self.url is not None:  # libpq's text names hosts: keep it in the log
                raise DataStoreError("the telemetry database failed") from None
            raise DataStoreError(f"the data store failed: {exc}") from None

    def ensure_schema(self, component: str, migrations: Sequence[Migration]) -> None:
        """Apply the migrations of `component` this database has not seen (once per process)."""
        key = (os.getpid(), component)
        if key in self._schemas:
            return
        with self.errors(), self.transaction() as conn:
            if self.engine.schema_lock:  # two processes must not migrate at once
                conn.execute(self.engine.schema_lock)
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
                    conn.execute(self.engine.ddl(statement))
            conn.execute(
                "INSERT INTO schema_version (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(migrations)),
            )
        self._schemas.add(key)

    def close(self) -> None:
        """Close this process's connections (every thread's); later calls reopen."""
        pid = os.getpid()
        with self._lock:
            mine = [c for p, c in self._connections if p == pid]
            self._connections = [(p, c) for p, c in self._connections if p != pid]
            self._owners = [entry for entry in self._owners if entry[0] != pid]
            self._idle = [entry for entry in self._idle if entry[0] != pid]
            self._schemas = {key for key in self._schemas if key[0] != pid}
        for conn in mine:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


def _ended(owner: weakref.ref[Any]) -> bool:
    current = owner()
    return current is None or bool(current.dead)


def _incremental_vacuum(conn: sqlite3.Connection) -> None:
    """`auto_vacuum = INCREMENTAL`, so pruning can give pages back to the file system. A new
    file takes it at once; an older one is rebuilt once by VACUUM (the migration: it needs free
    room of the file's size; failing, the file stays as it was until the next start)."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        return
    try:
        conn.execute("VACUUM")
    except sqlite3.Error as exc:
        log.warning("data store: cannot turn on incremental vacuum yet (%s)", exc)
    else:
        log.info("data store: incremental vacuum turned on", extra={"event": "store_vacuumed"})


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


def database_url() -> str | None:
    """SERVING_DATABASE_URL, validated: the command line reads the server's database."""
    from serving.settings import Settings

    return Settings.from_env().database_url
