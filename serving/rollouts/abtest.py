"""The A/B report of an alias: which variant served what, how fast, how well, and who wins.

Per version that served the alias in a window: requests, error rate, latency p50/p95/p99, the
prediction distribution; with feedback, accuracy (classifiers, Wilson 95% interval) or MAE
(regressors, t-based 95% interval), a test against the primary version (two-proportion z-test,
the same as a 2x2 chi-square without correction; Welch's t-test on absolute errors), and a
verdict: a winner at p < alpha, or how many more labelled predictions per variant a test with
80% power would need at the observed effect. Several challengers share alpha (Bonferroni).

Pure functions over the rows `predlog.read_window` returns; `build_report` does the reading.
No Flask here.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from scipy import stats

from serving.errors import ModelNotFound, ServingError
from serving.store.deployment import variant_name
from serving.store.model_store import ModelStore
from serving.telemetry.datastore import DataStore
from serving.telemetry.predlog import WindowRows, read_window

ALPHA = 0.05
POWER = 0.80
# Cohen's h (accuracy) or d (MAE) below this is "about zero": the variants perform the same.
NEGLIGIBLE_EFFECT = 0.01
# Below this many labelled predictions per variant the normal approximations behind the tests
# are poor (3 right of 3 against 0 of 3 would "win"): no test, no verdict.
MIN_LABELLED = 30
_QUANTILES = {"p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95}


@dataclass(frozen=True)
class Metric:
    """A quality metric of one variant over its labelled predictions."""

    name: str  # "accuracy" | "mae"
    n: int
    value: float
    low: float | None
    high: float | None
    samples: np.ndarray  # 1.0/0.0 per labelled row (accuracy) or absolute errors (mae)

    def to_dict(self) -> dict[str, Any]:
        ci = None if self.low is None else [_num(self.low), _num(self.high)]
        return {"metric": self.name, "labelled": self.n, "value": _num(self.value), "ci95": ci}


@dataclass(frozen=True)
class Comparison:
    """A challenger against the primary version."""

    variant: str
    against: str
    test: str
    difference: float  # challenger minus primary, in the metric's unit
    statistic: float
    p_value: float
    alpha: float
    better: str | None  # the variant with the better metric when significant
    effect_size: float  # Cohen's h or d, absolute
    needed_per_variant: int | None  # labelled predictions each, for 80% power at this effect
    more_per_variant: int | None

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "against": self.against,
            "test": self.test,
            "difference": _num(self.difference),
            "statistic": _num(self.statistic),
            "p_value": _num(self.p_value),
            "alpha": self.alpha,
            "significant": self.significant,
            "better": self.better,
            "effect_size": _num(self.effect_size),
            "needed_per_variant": self.needed_per_variant,
            "more_per_variant": self.more_per_variant,
        }


# -- statistics ------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(pairs: Sequence[tuple[Any, Any]]) -> Metric | None:
    """Share of (predicted, truth) pairs that match; None without pairs."""
    if not pairs:
        return None
    hits = np.array([1.0 if same_label(p, t) else 0.0 for p, t in pairs])
    n, k = len(hits), int(hits.sum())
    low, high = wilson_interval(k, n)
    return Metric("accuracy", n, k / n, low, high, hits)


def mean_absolute_error(pairs: Sequence[tuple[Any, Any]]) -> Metric | None:
    """MAE of numeric (predicted, truth) pairs with a t-based 95% interval (n >= 2)."""
    errors = np.array([abs(float(p) - float(t)) for p, t in pairs if _numeric(p, t)])
    if errors.size == 0:
        return None
    mae = float(errors.mean())
    if errors.size < 2:
        return Metric("mae", 1, mae, None, None, errors)
    half = float(stats.t.ppf(0.975, errors.size - 1)) * float(errors.std(ddof=1))
    half /= math.sqrt(errors.size)
    return Metric("mae", int(errors.size), mae, max(0.0, mae - half), mae + half, errors)


def same_label(predicted: Any, truth: Any) -> bool:
    """Labels match as values, or as text when one side is a string ("1" and 1)."""
    if isinstance(predicted, str) != isinstance(truth, str):
        return str(predicted) == str(truth)
    return bool(predicted == truth)


def needed_per_group(effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Observations per group for a two-sided two-sample test to detect `effect` (h or d)."""
    if not effect > 0 or not math.isfinite(effect):
        return None
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return math.ceil(2 * (z / effect) ** 2)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test (= chi-square 2x2, no correction)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return (0.0, 1.0)  # both all right or all wrong: nothing differs
    z = (k2 / n2 - k1 / n1) / se
    return (z, float(2 * stats.norm.sf(abs(z))))


def welch_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of Welch's t-test of mean(b) - mean(a) (unequal variances)."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(b.mean() - a.mean())
    if va + vb == 0:
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return (t, float(2 * stats.t.sf(abs(t), df)))


def compare(
    primary: Metric, challenger: Metric, names: tuple[str, str], alpha: float
) -> Comparison:
    """Test a challenger's metric against the primary's; names are (primary, challenger)."""
    if primary.name == "accuracy":
        k1, k2 = int(primary.samples.sum()), int(challenger.samples.sum())
        statistic, p = two_proportion_test(k1, primary.n, k2, challenger.n)
        effect = abs(_arcsine(challenger.value) - _arcsine(primary.value))
        test, higher_is_better = "two-proportion z-test", True
    else:
        statistic, p = welch_test(primary.samples, challenger.samples)
        spread = math.sqrt((primary.samples.var(ddof=1) + challenger.samples.var(ddof=1)) / 2)
        gap = abs(challenger.value - primary.value)
        effect = gap / spread if spread > 0 else (math.inf if gap > 0 else 0.0)
        test, higher_is_better = "Welch t-test on absolute errors", False
    difference = challenger.value - primary.value
    better = None
    if p < alpha and difference != 0:
        better = names[1] if (difference > 0) == higher_is_better else names[0]
    needed = needed_per_group(effect, alpha)
    more = None if needed is None else max(1, needed - min(primary.n, challenger.n))
    return Comparison(
        names[1], names[0], test, difference, statistic, p, alpha, better, effect, needed, more
    )


def _arcsine(p: float) -> float:
    return 2 * math.asin(math.sqrt(p))


def _numeric(*values: Any) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


# -- summaries -------------------------------------------------------------------------------


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(latencies, dtype=float), [50, 95, 99])
    return {"p50": _num(p50), "p95": _num(p95), "p99": _num(p99)}


def prediction_summary(counts: Sequence[tuple[Any, int]], task: str) -> dict[str, Any]:
    """Class counts (classifiers) or mean/std/quantiles (regressors) of predicted rows."""
    if task != "regressor":
        ordered = sorted(counts, key=lambda pair: (-pair[1], str(pair[0])))
        return {"classes": [{"label": label, "count": int(n)} for label, n in ordered]}
    numeric = [(v, n) for v, n in counts if _numeric(v)]
    if not numeric:
        return {"count": 0}
    values = np.repeat([float(v) for v, _ in numeric], [int(n) for _, n in numeric])
    out: dict[str, Any] = {"count": int(values.size), "mean": _num(values.mean())}
    out["std"] = _num(values.std(ddof=1)) if values.size > 1 else None
    out["min"], out["max"] = _num(values.min()), _num(values.max())
    for name, q in _QUANTILES.items():
        out[name] = _num(np.percentile(values, q))
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
            numeric = [(float(a), float(b)) for a, b in pairs if _numeric(a, b)]
            a, b = np.array(numeric).reshape(-1, 2).T
            same = np.isclose(a, b, rtol=1e-6, atol=1e-9)
            entry["agreement"] = _num(same.mean()) if a.size else None
            entry["mean_abs_difference"] = _num(np.abs(a - b).mean()) if a.size else None
        else:
            agree = sum(same_label(a, b) for a, b in pairs)
            entry["agreement"] = _num(agree / len(pairs)) if pairs else None
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
        "error_rate": _num(errors / len(requests)),
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


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# -- reading the store -----------------------------------------------------------------------


def build_report(
    datastore: DataStore,
    store: ModelStore,
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


def model_task(store: ModelStore, model: str, version: int | None) -> str:
    """ "classifier", "regressor" or "other", from the version's metadata."""
    if version is None:
        return "other"
    try:
        return str(store.read_metadata(model, version).get("task") or "other")
    except ServingError:
        return "other"


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
