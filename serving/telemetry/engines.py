"""The two SQL engines of the data store: SQLite (embedded default) and PostgreSQL (shared).

Components write their SQL once, with `?` placeholders and syntax both engines accept
(`INSERT ... ON CONFLICT ... DO UPDATE`, row values, `LIMIT` in subqueries). What differs is
kept here and nowhere else:

- placeholders: `?` (sqlite3) or `%s` (psycopg), translated by `Engine.sql`;
- migrations: `{id}` is the autoincrement primary key (`INTEGER PRIMARY KEY` or an identity
  column) and `{without_rowid}` SQLite's table option (nothing in PostgreSQL), by `Engine.ddl`;
- JSON stored as text: `json_each`/`json_extract` against `jsonb_array_elements`/`->`;
- how many rows are inserted at once (`executemany`, or PostgreSQL's COPY: a quarter of the
  client CPU of an `executemany` of the same rows);
- how a write transaction starts (`BEGIN IMMEDIATE` takes SQLite's one write lock up front)
  and how concurrent migrations are serialised (an advisory lock in PostgreSQL);
- which exceptions are the driver's, and which of them mean "try again later";
- the bytes the data store uses and how deleted rows give their room back (`used_bytes`,
  `give_back`: SQLite's pages and incremental vacuum, PostgreSQL's relation sizes and VACUUM).

psycopg is imported when a PostgreSQL store first connects, never at import.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
# Defaults of every connection, unless the URL says otherwise: a connect to an unreachable host
# gives up after 5 s, and a connection whose peer vanished (no RST: a partition, a dead machine)
# fails within ~15 s instead of TCP's minutes, so a writer thread never hangs on it for long.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "2",
    "tcp_user_timeout": "15000",
}
# The sizes `PostgresEngine.used_bytes` estimates from: the width of the newest rows stands for all.
_PG_SIZES = (
    "SELECT pg_total_relation_size('predictions') + pg_total_relation_size('feedback'),"
    " pg_relation_size('predictions'), (SELECT COUNT(*) FROM predictions),"
    " (SELECT AVG(pg_column_size(p.*)) FROM"
    " (SELECT * FROM predictions ORDER BY id DESC LIMIT 1000) p)"
)
_PG_ROW_OVERHEAD = 8  # bytes of a heap row beside its datum: line pointer and alignment
_SCHEMA_LOCK = 0x5E41  # the advisory lock id migrations take in PostgreSQL


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***` (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def is_database_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


class Engine:
    """SQLite: the statements as written."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    schema_lock: str | None = None  # BEGIN IMMEDIATE already serialises writers
    # A table of strings: FROM-clause item `j` with the elements of a JSON array (`j.value`).
    _JSON_ELEMENTS = "json_each({0}) j"
    _JSON_ITEM = "json_extract({0}, '$[' || {1} || ']')"
    _JSON_VALUE = "json_extract({0}, '$')"
    _IN_JSON_LIST = "IN (SELECT value FROM json_each(?))"
    _DDL = {"{id}": "INTEGER PRIMARY KEY", "{without_rowid}": " WITHOUT ROWID"}

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def transient(self, exc: BaseException) -> bool:
        """Whether a failed write may succeed later (the store is busy, down or full)."""
        return isinstance(exc, sqlite3.OperationalError)

    def sql(self, text: str) -> str:
        return text

    def ddl(self, text: str) -> str:
        for token, value in self._DDL.items():
            text = text.replace(token, value)
        return text

    def json_elements(self, column: str) -> str:
        return self._JSON_ELEMENTS.format(column)

    def json_item(self, column: str, index: str) -> str:
        return self._JSON_ITEM.format(column, index)

    def json_value(self, column: str) -> str:
        return self._JSON_VALUE.format(column)

    def in_json_list(self) -> str:
        """`IN (...)` over the elements of a JSON array passed as one `?` parameter."""
        return self._IN_JSON_LIST

    def insert(self, conn: Any, table: str, columns: Sequence[str], rows: Iterable[Any]) -> None:
        """Insert many rows (in the caller's transaction)."""
        marks = ", ".join("?" * len(columns))
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def used_bytes(self, conn: Any) -> int:
        """Bytes the database holds in its pages in use (the whole file, every table)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * conn.execute("PRAGMA page_size").fetchone()[0])

    def give_back(self, conn: Any) -> None:
        """Return free pages to the file system and truncate the WAL (outside a transaction)."""
        # executescript steps it to the end: sqlite3 stops a row-less statement after one step,
        # and incremental_vacuum frees one page per step.
        conn.executescript("PRAGMA incremental_vacuum")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class PostgresEngine(Engine):
    """PostgreSQL through psycopg 3: `%s` placeholders, identity ids, jsonb for reading JSON."""

    name = "postgresql"
    begin = "BEGIN"
    schema_lock = f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"
    _JSON_ELEMENTS = "jsonb_array_elements(CAST({0} AS jsonb)) AS j(value)"
    _JSON_ITEM = "(CAST({0} AS jsonb) -> {1})"
    _JSON_VALUE = "CAST({0} AS jsonb)"
    _IN_JSON_LIST = "IN (SELECT jsonb_array_elements_text(CAST(? AS jsonb)))"
    _DDL = {"{id}": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "{without_rowid}": ""}

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def transient(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError | psycopg.errors.SerializationFailure)

    def sql(self, text: str) -> str:
        # Our statements hold no `?` or `%` in literals: every `?` is a parameter.
        return text.replace("%", "%%").replace("?", "%s")

    def insert(self, conn: Any, table: str, columns: Sequence[str], rows: Iterable[Any]) -> None:
        with conn.raw.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def used_bytes(self, conn: Any) -> int:
        """An estimate of the bytes the prediction log's rows and indexes hold: the relations'
        size times the share of the heap live rows fill (VACUUM leaves the file as large, and
        new rows reuse its room)."""
        total, heap, count, width = conn.execute(_PG_SIZES).fetchone()
        if not heap or not count:
            return int(total)
        live = count * (float(width) + _PG_ROW_OVERHEAD)
        return int(total * min(1.0, live / heap))

    def give_back(self, conn: Any) -> None:
        """VACUUM the log's tables: their dead rows' room is reused by the next inserts."""
        conn.execute("VACUUM predictions")
        conn.execute("VACUUM feedback")

    def connect(self, url: str) -> PostgresConnection:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(url)
        defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
        conn = psycopg.connect(url, autocommit=True, **defaults)
        return PostgresConnection(conn, self)


class PostgresConnection:
    """A psycopg connection that takes the statements the components write for sqlite3:
    `execute` and `executemany` with `?` placeholders, returning a cursor."""

    def __init__(self, conn: Any, engine: PostgresEngine) -> None:
        self.raw = conn
        self._engine = engine

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(self._engine.sql(sql), params or None)

    def executemany(self, sql: str, rows: Any) -> Any:
        cursor = self.raw.cursor()
        cursor.executemany(self._engine.sql(sql), rows)
        return cursor

    @property
    def dead(self) -> bool:
        """Closed or broken (the server went away): open a new one."""
        return bool(self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()
