"""The drift report of one version over a window, from the counts every worker flushed."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from serving.errors import ModelNotFound
from serving.features.schema import InputSchema
from serving.monitoring import drift
from serving.monitoring.counts import COMPONENT, MIGRATIONS, bucket_of
from serving.monitoring.drift import PREDICTION, ROWS
from serving.store.base import StoreBase
from serving.store.model_store import DEFAULT_ALIAS
from serving.telemetry.datastore import DataStore


def live_counts(
    datastore: DataStore, model: str, version: int, since: float
) -> dict[str, dict[str, float]]:
    """feature -> bin -> count, summed over every worker from the minute of `since` on."""
    if not datastore.exists():
        return {}
    datastore.ensure_schema(COMPONENT, MIGRATIONS)
    with datastore.errors():
        rows = (
            datastore.connect()
            .execute(
                "SELECT feature, bin, SUM(n) FROM monitor_counts WHERE model = ? AND version = ?"
                " AND bucket >= ? GROUP BY feature, bin",
                (model, version, bucket_of(since)),
            )
            .fetchall()
        )
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for feature, bin_, n in rows:
        out[feature][bin_] = float(n)
    return dict(out)


def default_version(store: StoreBase, name: str) -> int:
    """The version the production alias serves, else the newest."""
    if not store.exists(name):
        raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
    aliases = store.read_deployment(name).get("aliases") or {}
    if DEFAULT_ALIAS in aliases:
        return int(aliases[DEFAULT_ALIAS])
    versions = store.versions(name)
    if not versions:
        raise ModelNotFound(f"model {name!r} has no versions", {"model": name})
    return int(max(versions))


def build_report(
    datastore: DataStore,
    store: StoreBase,
    name: str,
    version: int | None,
    seconds: float,
    now: float,
    window: str,
    warn: float,
    alert: float,
) -> dict[str, Any]:
    """The monitoring report of one version over the last `seconds`."""
    if version is None:
        version = default_version(store, name)
    metadata = store.read_metadata(name, version)
    counts = live_counts(datastore, name, version, now - seconds)
    labels = InputSchema.from_metadata(metadata).labels
    body: dict[str, Any] = {
        "model": name,
        "version": version,
        "window": window,
        "since": _iso(now - seconds),
        "until": _iso(now),
        "rows": int(counts.get(ROWS, {}).get("n", 0)),
        "thresholds": {"warn": warn, "alert": alert},
        "predictions": {k: int(v) for k, v in counts.get(PREDICTION, {}).items()}
        if metadata.get("task") == "classifier"
        else None,
    }
    body.update(drift.drift_report(metadata.get("reference_stats"), counts, warn, alert, labels))
    return body


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
