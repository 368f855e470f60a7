"""The A/B report of an alias: which variant served what, how fast, how well, and who wins.

Per version that served the alias in a window: requests, error rate, latency p50/p95/p99, the
prediction distribution; with feedback, accuracy (classifiers, Wilson 95% interval) or MAE
(regressors, t-based 95% interval), a test against the primary version (two-proportion z-test,
the same as a 2x2 chi-square without correction; Welch's t-test on absolute errors), and a
verdict: a winner at p < alpha, or how many more labelled predictions per variant a test with
80% power would need at the observed effect. Several challengers share alpha (Bonferroni).

Pure functions over the rows `telemetry.window.read_window` returns (the statistics are
`serving.rollouts.stats`); `build_report` does the reading. No Flask here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from serving.errors import ModelNotFound, ServingError
from serving.rollouts.stats import (
    ALPHA,
    Comparison,
    Metric,
    accuracy,
    compare,
    finite_or_none,
    is_number,
    mean_absolute_error,
    same_label,
)
from serving.store.base import StoreBase
from serving.store.deployment import variant_name
from serving.telemetry.datastore import DataStore
from serving.telemetry.window import WindowRows, read_window

# Cohen's h (accuracy) or d (MAE) below this is "about zero": the variants perform the same.
NEGLIGIBLE_EFFECT = 0.01
# Below this many labelled predictions per variant the normal approximations behind the tests
# are poor (3 right of 3 against 0 of 3 would "win"): no test, no verdict.
MIN_LABELLED = 30
_QUANTILES = {"p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95}


# -- summaries -------------------------------------------------------------------------------


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(latencies, dtype=float), [50, 95, 99])
    return {"p50": finite_or_none(p50), "p95": finite_or_none(p95), "p99": finite_or_none(p99)}


def prediction_summary(counts: Sequence[tuple[Any, int]], task: str) -> dict[str, Any]:
    """Class counts (classifiers) or mean/std/quantiles (regressors) of predicted rows."""
    if task != "regressor":
        ordered = sorted(counts, key=lambda pair: (-pair[1], str(pair[0])))
        return {"classes": [{"label": label, "count": int(n)} for label, n in ordered]}
    numeric = [(v, n) for v, n in counts if is_number(v)]
    if not numeric:
        return {"count": 0}
    values = np.repeat([float(v) for v, _ in numeric], [int(n) for _, n in numeric])
    out: dict[str, Any] = {"count": int(values.size), "mean": finite_or_none(values.mean())}
    out["std"] = finite_or_none(values.std(ddof=1)) if values.size > 1 else None
    out["min"], out["max"] = finite_or_none(values.min()), finite_or_none(values.max())
    for name, q in _QUANTILES.items():
        out[name] = finite_or_none(np.percentile(values, q))
    return out


def shadow_agreement(rows: Sequence[tuple[int, str, str]], task: str) -> list[dict[str, Any]]:
    """Per shadow version: requests and rows compared with the primary, and the agreement."""
    by_version: dict[int, list[tuple[Any, Any]]] = {}
    requests: dict[int, int] = {}
    for version, primary_json, shadow_json in rows:
        primary, shadow = orjson.loads(primary_json), orjson.loads(shadow_json)
        if not isinstance(primary, list) or not isinstance(shadow, list):
            continue
        if len(primary) != len(shadow):
            continue
        requests[version] = requests.get(version, 0) + 1
        by_version.setdefault(version, []).extend(zip(primary, shadow))
    out = []
    for version, pairs in sorted(by_version.items()):
        entry: dict[str, Any] = {"version": version, "requests": requests[version]}
        entry["rows"] = len(pairs)
        if task == "regressor":
            numeric = [(float(a), float(b)) for a, b in pairs if is_number(a, b)]
            a, b = np.array(numeric).reshape(-1, 2).T
            same = np.isclose(a, b, rtol=1e-6, atol=1e-9)
            entry["agreement"] = finite_or_none(same.mean()) if a.size else None
            entry["mean_abs_difference"] = finite_or_none(np.abs(a - b).mean()) if a.size else None
        else:
            agree = sum(same_label(a, b) for a, b in pairs)
            entry["agreement"] = finite_or_none(agree / len(pairs)) if pairs else None
        out.append(entry)
    return out


# -- the report ------------------------------------------------------------------------------


def report(
    rows: WindowRows, task: str, primary: int | None, alpha: float = ALPHA
) -> dict[str, Any]:
    """Variants, comparisons with the primary, shadows and the verdict, as plain JSON values."""
    requests, outputs, labelled = _by_version(rows.requests), _by_version(rows.outputs), {}
    for version, predicted, truth in rows.labelled:
        labelled.setdefault(version, []).append((predicted, truth))
    versions = sorted(requests)
    if primary not in requests:  # the alias moved, or its version had no traffic: the busiest
        primary = max(versions, key=lambda v: (len(requests[v]), -v)) if versions else None
    metric_of = mean_absolute_error if task == "regressor" else accuracy
    metrics = {v: metric_of(labelled.get(v, [])) for v in versions}
    base = metrics.get(primary) if primary is not None else None
    shared_alpha = alpha / max(1, len(versions) - 1)
    variants, comparisons = [], {}
    for version in versions:
        entry = _variant(version, requests[version], outputs.get(version, []), task)
        entry["primary"] = version == primary
        metric = metrics[version]
        entry["feedback"] = metric.to_dict() if metric else None
        entry["vs_primary"] = None
        if version != primary and metric and base and _testable(base, metric):
            names = (variant_name(primary), variant_name(version))  # type: ignore[arg-type]
            comparisons[version] = compare(base, metric, names, shared_alpha)
            entry["vs_primary"] = comparisons[version].to_dict()
        variants.append(entry)
    return {
        "task": task,
        "primary": variant_name(primary) if primary is not None else None,
        "variants": variants,
        "shadows": shadow_agreement(rows.shadows, task),
        "verdict": verdict(versions, primary, metrics, comparisons, task),
    }


def _by_version(rows: Sequence[tuple[Any, ...]]) -> dict[int, list[tuple[Any, ...]]]:
    grouped: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return grouped


def _variant(
    version: int, requests: list[tuple[Any, ...]], outputs: list[tuple[Any, ...]], task: str
) -> dict[str, Any]:
    """Traffic of one version: requests (version, status, latency_ms, rows), outputs."""
    errors = sum(1 for r in requests if r[1] != 200)
    return {
        "variant": variant_name(version),
        "version": version,
        "requests": len(requests),
        "rows": sum(r[3] for r in requests),
        "errors": errors,
        "error_rate": finite_or_none(errors / len(requests)),
        "latency_ms": latency_summary([r[2] for r in requests]),
        "predictions": prediction_summary([(value, n) for _, value, n in outputs], task),
    }


def _testable(a: Metric, b: Metric) -> bool:
    return a.n >= MIN_LABELLED and b.n >= MIN_LABELLED


def verdict(
    versions: list[int],
    primary: int | None,
    metrics: dict[int, Metric | None],
    comparisons: dict[int, Comparison],
    task: str,
) -> dict[str, Any]:
    """{"winner": variant or None, "text": one plain sentence per challenger}."""
    if primary is None:
        return {"winner": None, "text": "no predictions were logged in this window"}
    if len(versions) == 1:
        text = f"only {variant_name(primary)} served in this window: nothing to compare"
        return {"winner": None, "text": text}
    if task not in ("classifier", "regressor"):
        return {"winner": None, "text": f"no quality metric for a {task} model: compare by hand"}
    lines, winners = [], []
    for version in versions:
        if version == primary:
            continue
        comparison = comparisons.get(version)
        if comparison is None:
            lines.append(_not_enough(primary, version, metrics))
            continue
        lines.append(_sentence(comparison, metrics[primary], metrics[version]))  # type: ignore[arg-type]
        if comparison.better is not None:
            winners.append(comparison)
    winner = _winner(primary, comparisons, winners, task, metrics)
    return {"winner": winner, "text": " ".join(lines)}


def _winner(
    primary: int,
    comparisons: dict[int, Comparison],
    winners: list[Comparison],
    task: str,
    metrics: dict[int, Metric | None],
) -> str | None:
    challengers_won = [c for c in winners if c.better == c.variant]
    if challengers_won:
        sign = -1 if task == "regressor" else 1
        best = max(challengers_won, key=lambda c: sign * c.difference)
        return best.variant
    all_tested = len(comparisons) == len([v for v in metrics if v != primary])
    if comparisons and all_tested and all(c.better == c.against for c in comparisons.values()):
        return variant_name(primary)
    return None


def _sentence(c: Comparison, base: Metric, other: Metric) -> str:
    shown = f"{other.name} {_fmt(other.value)} vs {_fmt(base.value)}"
    counts = f"{other.n} and {base.n} labelled predictions"
    if c.better is not None:
        loser = c.against if c.better == c.variant else c.variant
        return (
            f"{c.better} wins over {loser}: {shown} ({c.test}, p = {c.p_value:.2g} < "
            f"{c.alpha:g}, {counts})."
        )
    head = f"no significant difference yet between {c.variant} and {c.against}: {shown}"
    if c.effect_size < NEGLIGIBLE_EFFECT:
        tail = (
            "the observed difference is about zero (effect size "
            f"{c.effect_size:.3f}), so more data is unlikely to separate them"
        )
        if c.more_per_variant is not None:
            tail += f" (about {c.more_per_variant:,} more labelled predictions per variant)"
        return f"{head}; {tail}."
    return (
        f"{head} (p = {c.p_value:.2g}); about {c.more_per_variant:,} more labelled predictions "
        f"per variant needed ({c.needed_per_variant:,} each for 80% power at the observed "
        f"difference, alpha {c.alpha:g})."
    )


def _not_enough(primary: int, version: int, metrics: dict[int, Metric | None]) -> str:
    counts = {v: (metrics[v].n if metrics.get(v) else 0) for v in (version, primary)}  # type: ignore[union-attr]
    shown = " and ".join(f"{n} for {variant_name(v)}" for v, n in counts.items())
    return (
        f"{variant_name(version)} vs {variant_name(primary)}: not enough labelled predictions "
        f"yet ({shown}; a test needs {MIN_LABELLED} per variant): send true labels or values "
        "to POST /v1/feedback."
    )


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"


# -- reading the store -----------------------------------------------------------------------


def build_report(
    datastore: DataStore,
    store: StoreBase,
    model: str,
    alias: str,
    window_seconds: float,
    now: float,
    window: str | None = None,
) -> dict[str, Any]:
    """The A/B report of `model`/`alias` over the `window_seconds` before `now`."""
    if not store.exists(model):
        raise ModelNotFound(f"model {model!r} is not in the store", {"model": model})
    primary = store.read_deployment(model)["aliases"].get(alias)
    with datastore.errors():
        rows = read_window(datastore, model, alias, now - window_seconds, now)
    seen = sorted({r[0] for r in rows.requests})
    task = model_task(store, model, primary if primary is not None else (seen or [None])[0])
    body = report(rows, task, primary)
    return {
        "model": model,
        "alias": alias,
        "window": window or f"{window_seconds:g}s",
        "window_seconds": window_seconds,
        "since": _iso(now - window_seconds),
        "until": _iso(now),
        **body,
    }


def model_task(store: StoreBase, model: str, version: int | None) -> str:
    """ "classifier", "regressor" or "other", from the version's metadata."""
    if version is None:
        return "other"
    try:
        return str(store.read_metadata(model, version).get("task") or "other")
    except ServingError:
        return "other"


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
