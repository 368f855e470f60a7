"""Retention of the prediction log: age, row cap and byte bound, and space given back.

Each worker's writer thread calls `prune` now and then. Rows past the retention period and
beyond the newest `max_rows` are deleted in short chunks, then the byte bound: when the store
uses more than `max_bytes`, the oldest predictions go until an estimate of what is left is at
most `BYTES_HEADROOM` of the bound, so the next pass does not delete again at once. After a
deletion the space is given back (`Engine.give_back`): SQLite's free pages are returned to the
file system (`auto_vacuum = INCREMENTAL`, `PRAGMA incremental_vacuum`) and the WAL truncated;
PostgreSQL's dead rows are vacuumed so new rows reuse their room.
"""

from __future__ import annotations

import logging

from serving.telemetry.datastore import DataStore

log = logging.getLogger(__name__)
PRUNE_CHUNK = 10_000  # rows per delete transaction: short write locks for the other workers
BYTES_HEADROOM = 0.8  # the share of `max_bytes` a byte prune leaves in use
_OLD = "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions WHERE at < ? LIMIT ?)"
_OLD_FEEDBACK = (
    "DELETE FROM feedback WHERE (request_id, row) IN"
    " (SELECT request_id, row FROM feedback WHERE at < ? LIMIT ?)"
)
# ids grow by one per insert: the newest `keep` ids are the ones kept.
_BEYOND = (
    "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions WHERE "
    "id <= (SELECT MAX(id) FROM predictions) - ? LIMIT ?)"
)


def prune(datastore: DataStore, cutoff: float, max_rows: int, max_bytes: int) -> int:
    """Delete what is older than `cutoff`, beyond `max_rows` or `max_bytes`; rows deleted."""
    deleted = delete_chunked(datastore, _OLD, cutoff)
    deleted += delete_chunked(datastore, _OLD_FEEDBACK, cutoff)
    deleted += delete_chunked(datastore, _BEYOND, max_rows)
    keep = rows_within(datastore, max_bytes)
    if keep is not None:
        deleted += delete_chunked(datastore, _BEYOND, keep)
    if deleted:
        give_back(datastore)
    return deleted


def rows_within(datastore: DataStore, max_bytes: int) -> int | None:
    """How many of the newest predictions to keep to fit `max_bytes`; None when they fit."""
    conn = datastore.connect()
    used = datastore.engine.used_bytes(conn)
    if used <= max_bytes:
        return None
    count = int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
    if count == 0:
        return None
    keep = int(count * max_bytes * BYTES_HEADROOM / used)
    log.warning(
        "prediction log %s: %d bytes in use, over SERVING_LOG_MAX_BYTES=%d: keeping the "
        "newest %d of %d predictions",
        datastore.where, used, max_bytes, keep, count,
        extra={"event": "predlog_bytes_pruned", "bytes": used, "kept": keep},
    )  # fmt: skip
    return keep


def give_back(datastore: DataStore) -> None:
    """Return the room of deleted rows (outside a transaction); a failure is only logged."""
    try:
        datastore.engine.give_back(datastore.connect())
    except datastore.engine.errors:
        log.warning("prediction log %s: cannot give space back", datastore.where, exc_info=True)


def delete_chunked(datastore: DataStore, sql: str, bound: float) -> int:
    total = 0
    while True:
        with datastore.transaction() as conn:
            count = conn.execute(sql, (bound, PRUNE_CHUNK)).rowcount
        total += count
        if count < PRUNE_CHUNK:
            return total
