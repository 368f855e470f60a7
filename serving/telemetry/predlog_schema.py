"""The prediction log's tables (predictions, feedback), shared by the recorder and the readers.

Written for both engines (`serving.telemetry.engines`): `{id}` is the autoincrement key,
DOUBLE PRECISION is SQLite's REAL and PostgreSQL's float8 (PostgreSQL's REAL is float4).
"""

from __future__ import annotations

COMPONENT = "predlog"
MIGRATIONS = [
    [
        "CREATE TABLE predictions (id {id}, request_id TEXT NOT NULL,"
        " at DOUBLE PRECISION NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL, alias TEXT,"
        " variant TEXT, shadow INTEGER NOT NULL, status INTEGER NOT NULL,"
        " latency_ms DOUBLE PRECISION NOT NULL, rows INTEGER NOT NULL, inputs TEXT, outputs TEXT)",
        "CREATE INDEX predictions_by_model ON predictions (model, alias, at)",
        "CREATE INDEX predictions_by_request ON predictions (request_id)",
        "CREATE INDEX predictions_by_time ON predictions (at)",
        # The true label (classifier) or value (regressor) of one row of one prediction.
        "CREATE TABLE feedback (request_id TEXT NOT NULL, row INTEGER NOT NULL,"
        " truth TEXT NOT NULL, kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (request_id, row))",
        "CREATE INDEX feedback_by_time ON feedback (at)",
    ],
]
