"""The dashboard's data: traffic series, traffic per version and variant, drift, recent swaps.

Everything comes from what all workers share: the `traffic_counts` and `monitor_counts` tables
of the data store (flushed by every worker) and the model store (deployments, history.jsonl).
No Flask here; `serving.api.dashboard` serves it as JSON and the page draws it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from serving.errors import DeploymentDamaged, ModelNotFound, ServingError
from serving.monitoring import traffic
from serving.monitoring.counts import COMPONENT, MIGRATIONS
from serving.monitoring.report import build_report
from serving.store.base import StoreBase
from serving.telemetry.datastore import DataStore

MAX_POINTS = 90  # points per series: the step grows with the window (10 s for 15 minutes)
WORST_FEATURES = 3  # features shown with their reference vs live histograms
MAX_SWAPS = 20
SWAP_ACTIONS = ("promote", "rollback", "route", "shadow")
QUANTILES = (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))
_RANK = {"alert": 0, "warn": 1, "ok": 2}

Histogram = dict[int, float]


def choose_step(seconds: float) -> int:
    """Seconds per point: a multiple of the 10 s bucket, at most MAX_POINTS points."""
    buckets = math.ceil(seconds / MAX_POINTS / traffic.BUCKET_SECONDS)
    return max(1, buckets) * traffic.BUCKET_SECONDS


def read_traffic(
    datastore: DataStore, start: int, step: int, model: str | None = None
) -> list[tuple[Any, ...]]:
    """(slot, model, version, variant, status, bin, n) summed over every worker from `start`."""
    if not datastore.exists():
        return []
    datastore.ensure_schema(COMPONENT, MIGRATIONS)
    where, args = "bucket >= ?", [start]
    if model is not None:
        where, args = where + " AND model = ?", [*args, model]
    with datastore.errors():
        return (
            datastore.connect()
            .execute(
                f"SELECT (bucket - ?) / ? AS slot, model, version, variant, status, bin, SUM(n)"
                f" FROM traffic_counts WHERE {where}"
                f" GROUP BY slot, model, version, variant, status, bin",
                (start, step, *args),
            )
            .fetchall()
        )


class _Tally:
    """Requests, failures and a latency histogram of one slot or one (model, version, variant)."""

    __slots__ = ("client", "histogram", "requests", "server")

    def __init__(self) -> None:
        self.requests = self.client = self.server = 0.0
        self.histogram: Histogram = defaultdict(float)

    def add(self, status: int, bin_: int, n: float) -> None:
        self.requests += n
        if 400 <= status < 500:
            self.client += n
        elif status >= 500:
            self.server += n
        self.histogram[bin_] += n

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": int(self.requests),
            "client_errors": int(self.client),
            "server_errors": int(self.server),
            "error_rate": _share(self.client + self.server, self.requests),
        }
        for name, q in QUANTILES:
            out[name] = _round(traffic.percentile(self.histogram, q))
        return out


def traffic_series(
    rows: Iterable[tuple[Any, ...]], start: int, step: int, now: float
) -> tuple[dict[str, Any], dict[str, Any], dict[tuple[str, int, str], _Tally]]:
    """(series, totals, per (model, version, variant) tallies) from `read_traffic` rows."""
    slots = max(1, int((now - start) // step) + 1)
    per_slot = [_Tally() for _ in range(slots)]
    total = _Tally()
    per_version: dict[tuple[str, int, str], _Tally] = defaultdict(_Tally)
    version_slots: dict[tuple[str, int, str], list[float]] = defaultdict(lambda: [0.0] * slots)
    for slot, model, version, variant, status, bin_, n in rows:
        if not 0 <= slot < slots:
            continue
        per_slot[slot].add(status, bin_, n)
        total.add(status, bin_, n)
        if model:
            per_version[(model, version, variant)].add(status, bin_, n)
            version_slots[(model, version, variant)][slot] += n
    # The last slot is still filling: its rate is over the seconds it has had so far.
    spans = [float(step)] * slots
    spans[-1] = max(1.0, min(float(step), now - (start + (slots - 1) * step)))
    series: dict[str, Any] = {
        "t": [start + i * step for i in range(slots)],
        "requests_per_s": [_round(t.requests / s) for t, s in zip(per_slot, spans)],
        "client_error_rate": [_share(t.client, t.requests) for t in per_slot],
        "server_error_rate": [_share(t.server, t.requests) for t in per_slot],
    }
    for name, q in QUANTILES:
        series[name] = [_round(traffic.percentile(t.histogram, q)) for t in per_slot]
    series["by_version"] = [
        {
            "model": model,
            "version": version,
            "variant": variant or None,
            "requests_per_s": [_round(n / s) for n, s in zip(counts, spans)],
        }
        for (model, version, variant), counts in sorted(version_slots.items())
    ]
    totals = total.summary()
    totals["requests_per_s"] = _round(total.requests / max(1.0, now - start))
    totals["unrouted"] = int(total.requests - sum(t.requests for t in per_version.values()))
    return series, totals, per_version


def drift_summary(
    datastore: DataStore,
    store: StoreBase,
    name: str,
    seconds: float,
    now: float,
    window: str,
    warn: float,
    alert: float,
) -> dict[str, Any]:
    """The production version's drift: a row per feature, histograms of the worst ones."""
    try:
        report = build_report(datastore, store, name, None, seconds, now, window, warn, alert)
    except ServingError as exc:  # no version yet, unreadable metadata: say so, do not fail
        return {"version": None, "status": "unavailable", "reference": False, "note": str(exc)}
    features = [
        {key: f.get(key) for key in ("name", "kind", "rows", "psi", "p_value", "status")}
        | {"outside_range": f.get("outside_range"), "missing_rate": f.get("missing_rate")}
        | ({"oov_rate": f.get("oov_rate")} if f["kind"] == "text" else {})
        for f in report["features"]
    ]
    ranked = sorted(
        report["features"], key=lambda f: (_RANK.get(f["status"], 3), -(f["psi"] or 0.0))
    )
    worst = [
        {"name": f["name"], "status": f["status"], "psi": f["psi"], "histogram": f["histogram"]}
        for f in ranked[:WORST_FEATURES]
    ]
    output = report["output"]
    confidence = report["confidence"]
    return {
        "version": report["version"],
        "status": report["status"],
        "reference": report["reference"],
        "note": report["note"],
        "rows": report["rows"],
        "predictions": report["predictions"],
        "features": features,
        "worst": worst,
        "output": None
        if output is None
        else {k: output[k] for k in ("kind", "rows", "psi", "status", "histogram")},
        "confidence": None
        if confidence is None
        else {k: confidence[k] for k in ("rows", "mean", "reference_mean", "shift")},
    }


def recent_swaps(store: StoreBase, names: Iterable[str], limit: int = MAX_SWAPS) -> list[Any]:
    """The latest changes of what serves (promote, rollback, route, shadow), newest first."""
    events = []
    for name in names:
        for event in store.history(name):
            if event.get("action") in SWAP_ACTIONS:
                events.append({"model": name, **event})
    events.sort(key=lambda e: str(e.get("at", "")), reverse=True)
    return events[:limit]


def build_dashboard(
    datastore: DataStore,
    store: StoreBase,
    seconds: float,
    now: float,
    window: str,
    warn: float,
    alert: float,
    model: str | None = None,
) -> dict[str, Any]:
    """Everything the dashboard page shows, for the last `seconds` (all models or one)."""
    if model is not None and not store.exists(model):
        raise ModelNotFound(f"model {model!r} is not in the store", {"model": model})
    step = choose_step(seconds)
    start = int((now - seconds) // step) * step
    rows = read_traffic(datastore, start, step, model)
    series, totals, per_version = traffic_series(rows, start, step, now)
    names = [model] if model is not None else store.list_models()
    models = []
    for name in names:
        deployment, problem = _deployment(store, name)
        models.append(
            {
                **problem,
                "name": name,
                "aliases": deployment["aliases"],
                "routes": deployment.get("routes") or {},
                "shadows": deployment.get("shadows") or {},
                "traffic": [
                    {"version": version, "variant": variant or None, **tally.summary()}
                    for (m, version, variant), tally in sorted(per_version.items())
                    if m == name
                ],
                "drift": drift_summary(datastore, store, name, seconds, now, window, warn, alert),
            }
        )
    return {
        "window": window,
        "since": _iso(start),
        "until": _iso(now),
        "now": now,
        "step": step,
        "thresholds": {"warn": warn, "alert": alert},
        "series": series,
        "totals": totals,
        "models": models,
        "swaps": recent_swaps(store, names),
    }


def _deployment(store: StoreBase, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A model's deployment, or none and why: one damaged model must not blank the others."""
    try:
        return store.read_deployment(name), {}
    except DeploymentDamaged as exc:
        return {"aliases": {}}, {"problem": exc.message}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
