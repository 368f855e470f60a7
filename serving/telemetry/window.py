"""Reading what an alias's traffic did in a window: requests, outputs, labels, shadows (A/B).

Inputs, outputs and truths are JSON text in both engines; the JSON functions that take them
apart differ (`serving.telemetry.engines`), and both return plain Python values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.telemetry.datastore import DataStore
from serving.telemetry.predlog_schema import COMPONENT, MIGRATIONS


@dataclass(frozen=True)
class WindowRows:
    """The raw material of an A/B report: plain tuples, read in a handful of queries."""

    requests: list[tuple[int, int, float, int]]  # (version, status, latency_ms, rows)
    outputs: list[tuple[int, Any, int]]  # (version, predicted value, how many rows)
    labelled: list[tuple[int, Any, Any]]  # (version, predicted, truth)
    shadows: list[tuple[int, str, str]]  # (shadow version, primary outputs, shadow outputs)


_WHERE = "p.model = ? AND p.alias = ? AND p.at >= ? AND p.at <= ?"


def read_window(
    datastore: DataStore, model: str, alias: str, since: float, until: float
) -> WindowRows:
    """What the primary traffic (and shadows) of `model`/`alias` did between two times."""
    if not datastore.exists():
        return WindowRows([], [], [], [])
    datastore.ensure_schema(COMPONENT, MIGRATIONS)
    conn, sql = datastore.connect(), datastore.engine
    args = (model, alias, since, until)
    requests = conn.execute(
        f"SELECT p.version, p.status, p.latency_ms, p.rows FROM predictions p"
        f" WHERE {_WHERE} AND p.shadow = 0",
        args,
    ).fetchall()
    outputs = conn.execute(
        f"SELECT p.version, j.value, COUNT(*) FROM predictions p,"
        f" {sql.json_elements('p.outputs')}"
        f" WHERE {_WHERE} AND p.shadow = 0 AND p.status = 200 GROUP BY p.version, j.value",
        args,
    ).fetchall()
    labelled = conn.execute(
        f"SELECT p.version, {sql.json_item('p.outputs', 'f.row')},"
        f" {sql.json_value('f.truth')} FROM predictions p"
        f" JOIN feedback f ON f.request_id = p.request_id AND f.row < p.rows"
        f" WHERE {_WHERE} AND p.shadow = 0 AND p.status = 200"
        f" AND {sql.json_item('p.outputs', 'f.row')} IS NOT NULL",  # past SERVING_LOG_OUTPUT_ROWS
        args,
    ).fetchall()
    shadows = conn.execute(
        f"SELECT p.version, q.outputs, p.outputs FROM predictions p"
        f" JOIN predictions q ON q.request_id = p.request_id AND q.model = p.model"
        f" AND q.shadow = 0 AND q.status = 200"
        f" WHERE {_WHERE} AND p.shadow = 1 AND p.outputs IS NOT NULL",
        args,
    ).fetchall()
    return WindowRows(requests, outputs, labelled, shadows)
