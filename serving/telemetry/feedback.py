"""Feedback: the true label or value of a logged prediction's row, stored beside the log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from serving.telemetry.datastore import DataStore
from serving.telemetry.predlog_schema import COMPONENT, MIGRATIONS


@dataclass(frozen=True)
class Feedback:
    """The truth for one row of one logged prediction."""

    request_id: str
    truth: Any  # a class label, or a number for a regressor
    kind: str = "label"  # "label" | "value"
    row: int = 0


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int
    unknown: list[str] = field(default_factory=list)  # request ids no prediction has
    invalid_rows: list[dict[str, Any]] = field(default_factory=list)  # row past the prediction's
    overwritten: int = 0  # accepted items that replaced an earlier truth of their row


def store_feedback(datastore: DataStore, items: Sequence[Feedback], now: float) -> FeedbackResult:
    """Insert (or replace: the latest truth wins) feedback whose prediction is logged."""
    if not items:
        return FeedbackResult(0)
    datastore.ensure_schema(COMPONENT, MIGRATIONS)
    ids = sorted({item.request_id for item in items})
    conn = datastore.connect()
    rows_of = dict(
        conn.execute(
            "SELECT request_id, MAX(rows) FROM predictions WHERE shadow = 0 AND request_id "
            f"{datastore.engine.in_json_list()} GROUP BY request_id",
            (orjson.dumps(ids).decode(),),
        ).fetchall()
    )
    accepted, invalid = [], []
    for item in items:
        rows = rows_of.get(item.request_id)
        if rows is None:
            continue
        if item.row >= rows:
            invalid.append({"request_id": item.request_id, "row": item.row, "rows": rows})
            continue
        accepted.append((item.request_id, item.row, orjson.dumps(item.truth).decode(), item.kind))
    overwritten = 0
    if accepted:
        accepted.sort(key=lambda values: values[:2])  # one lock order in every worker: no deadlock
        with datastore.transaction() as conn:
            earlier = conn.execute(
                "SELECT request_id, row FROM feedback WHERE request_id "
                f"{datastore.engine.in_json_list()}",
                (orjson.dumps(sorted({v[0] for v in accepted})).decode(),),
            ).fetchall()
            keys = {(str(rid), int(row)) for rid, row in earlier}
            overwritten = sum((values[0], values[1]) in keys for values in accepted)
            conn.executemany(
                "INSERT INTO feedback (request_id, row, truth, kind, at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (request_id, row) DO UPDATE SET truth = excluded.truth,"
                " kind = excluded.kind, at = excluded.at",
                [(*values, now) for values in accepted],
            )
    unknown = [rid for rid in ids if rid not in rows_of]
    return FeedbackResult(len(accepted), unknown, invalid, overwritten)
