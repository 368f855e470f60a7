"""The `monitor_counts` table every worker adds to: its schema, the UPSERT, minute buckets.

One row per (model, version, minute, feature, bin); a query over a window sums the minutes of
every worker, past and present. The `traffic_counts` table (`serving.monitoring.traffic`) is
migrated with it: the same flusher writes both in one transaction. The DDL is written for both
engines (`serving.telemetry.engines`: `{without_rowid}`, DOUBLE PRECISION for float8).
"""

from __future__ import annotations

from serving.monitoring import traffic

COMPONENT = "monitor"
MIGRATIONS = [
    [
        "CREATE TABLE monitor_counts (model TEXT NOT NULL, version INTEGER NOT NULL,"
        " bucket BIGINT NOT NULL, feature TEXT NOT NULL, bin TEXT NOT NULL,"
        " n DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (model, version, bucket, feature, bin)){without_rowid}",
        "CREATE INDEX monitor_by_time ON monitor_counts (bucket)",
    ],
    traffic.MIGRATION,
]
BUCKET_SECONDS = 60
UPSERT = (
    "INSERT INTO monitor_counts (model, version, bucket, feature, bin, n) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT (model, version, bucket, feature, bin)"
    " DO UPDATE SET n = monitor_counts.n + excluded.n"
)
Key = tuple[str, int, int, str, str]  # model, version, bucket, feature, bin


def bucket_of(at: float) -> int:
    """The start of the minute `at` falls in (seconds since the epoch)."""
    return int(at // BUCKET_SECONDS) * BUCKET_SECONDS
