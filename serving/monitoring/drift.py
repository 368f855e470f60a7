"""Drift of live traffic against a version's reference statistics: pure functions, no I/O.

Inputs are the reference statistics of `serving.store.reference` (stored in metadata.json) and the
live counts summed over a window by `serving.monitoring.report` (feature -> bin -> count).
Bins of a numeric feature are `b0`..`bK` (the reference's interior cut points, so a value beyond the
reference range falls in the first or last bin), plus `below`/`above` (outside the reference
min/max), `missing` and `sum` (of the values, for the mean). A categorical feature's bins are
its categories, unseen ones summed into `__other__`. A text feature's bins are those of its
length in characters, plus `tokens` and `oov` (tokens out of the fitted vocabulary).

PSI = sum((live - ref) * ln(live / ref)) over bins, both shares floored at EPSILON so an empty
bin does not make it infinite. The p-value is Pearson's chi-square goodness of fit of the live
bin counts to the reference proportions (scipy.stats.chisquare): with thousands of rows it
flags even tiny, harmless shifts, which is why the status follows PSI, not the p-value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

EPSILON = 1e-4
MIN_ROWS = 50  # fewer live rows than this: status "insufficient_data" (PSI would be noise)
OTHER = "__other__"
STATUSES = ("ok", "warn", "alert")
# Reserved rows of the live counts next to the features.
ROWS = "__rows__"
PREDICTION = "__prediction__"
CONFIDENCE = "__confidence__"
NO_REFERENCE = "this version was registered without reference data: no drift can be computed"

Counts = Mapping[str, float]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of `actual` (counts or shares) against `expected` shares."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or not len(e) or a.sum() <= 0 or e.sum() <= 0:
        raise ValueError("psi needs two non-empty distributions of the same length")
    e = np.clip(e / e.sum(), EPSILON, None)
    a = np.clip(a / a.sum(), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def chi2_pvalue(expected: Sequence[float], counts: Sequence[float]) -> float | None:
    """Chi-square goodness-of-fit p-value of `counts` against the `expected` proportions."""
    observed = np.asarray(counts, dtype=np.float64)
    total = observed.sum()
    if len(observed) < 2 or total <= 0:
        return None
    from scipy.stats import chisquare  # scipy: only when a report is computed

    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    e = e / e.sum() * total
    with np.errstate(all="ignore"):
        p = float(chisquare(observed, e).pvalue)
    return p if np.isfinite(p) else None


def status(value: float | None, warn: float, alert: float) -> str:
    if value is None:
        return "insufficient_data"
    if value >= alert:
        return "alert"
    return "warn" if value >= warn else "ok"


def worst(statuses: Sequence[str]) -> str:
    ranked = [s for s in statuses if s in STATUSES]
    return max(ranked, key=STATUSES.index) if ranked else "insufficient_data"


def numeric_bins(edges: Sequence[float]) -> list[str]:
    return [f"b{i}" for i in range(len(edges) + 1)]


def numeric_feature(
    name: str, ref: Mapping[str, Any], live: Counts, warn: float, alert: float
) -> dict[str, Any]:
    edges = list(ref.get("edges") or [])
    counts = [float(live.get(b, 0.0)) for b in numeric_bins(edges)]
    present = sum(counts)
    missing = float(live.get("missing", 0.0))
    out = _common(name, "numeric", ref, present, missing)
    out["outside_range"] = (
        (float(live.get("below", 0.0)) + float(live.get("above", 0.0))) / present
        if present
        else None
    )
    out["reference_mean"] = ref.get("mean")
    out["mean"] = float(live.get("sum", 0.0)) / present if present else None
    std = ref.get("std")
    out["mean_shift_std"] = (
        (out["mean"] - ref["mean"]) / std if out["mean"] is not None and std else None
    )
    labels = _interval_labels(edges)
    _score(out, list(ref.get("proportions") or []), counts, labels, warn, alert)
    return out


def categorical_feature(
    name: str, ref: Mapping[str, Any], live: Counts, warn: float, alert: float
) -> dict[str, Any]:
    labels = [*ref.get("frequencies", {}), OTHER]
    expected = [*ref.get("frequencies", {}).values(), float(ref.get("other", 0.0))]
    counts = [float(live.get(label, 0.0)) for label in labels]
    missing = float(live.get("missing", 0.0))
    out = _common(name, "categorical", ref, sum(counts), missing)
    out["unseen_share"] = counts[-1] / sum(counts) if sum(counts) else None
    _score(out, expected, counts, labels, warn, alert)
    return out


def text_feature(
    name: str, ref: Mapping[str, Any], live: Counts, warn: float, alert: float
) -> dict[str, Any]:
    """A text feature: the drift of its length (characters), and the out-of-vocabulary rate of
    its tokens against the reference's; the status is the worse of the two PSIs."""
    out = numeric_feature(name, ref, live, warn, alert) | {"kind": "text"}
    tokens, oov = float(live.get("tokens", 0.0)), float(live.get("oov", 0.0))
    reference = ref.get("oov_rate")
    out["oov_rate"] = oov / tokens if tokens else None
    out["reference_oov_rate"] = reference
    ok = reference is not None and tokens >= MIN_ROWS
    out["oov_psi"] = psi([1.0 - reference, reference], [tokens - oov, oov]) if ok else None
    if out["oov_psi"] is not None:
        out["status"] = worst([out["status"], status(out["oov_psi"], warn, alert)])
    return out


def output_drift(ref: Mapping[str, Any] | None, live: Counts, warn: float, alert: float) -> Any:
    """PSI of the prediction distribution (classes, or the numeric prediction's bins)."""
    if not ref:
        return None
    if ref.get("kind") == "classes":
        reference = {str(k): float(v) for k, v in ref["proportions"].items()}
        labels = sorted(set(reference) | set(live))
        expected = [reference.get(label, 0.0) for label in labels]
        counts = [float(live.get(label, 0.0)) for label in labels]
        out: dict[str, Any] = {"kind": "classes", "rows": sum(counts)}
    else:
        edges = list(ref.get("edges") or [])
        labels = _interval_labels(edges)
        expected = list(ref.get("proportions") or [])
        counts = [float(live.get(b, 0.0)) for b in numeric_bins(edges)]
        present = sum(counts)
        out = {
            "kind": "numeric",
            "rows": present,
            "reference_mean": ref.get("mean"),
            "mean": float(live.get("sum", 0.0)) / present if present else None,
        }
    _score(out, expected, counts, labels, warn, alert)
    return out


def confidence_shift(ref: Mapping[str, Any] | None, live: Counts, warn: float, alert: float) -> Any:
    """Mean confidence (max probability) live vs reference, and PSI of its histogram."""
    if not ref:
        return None
    edges = list(ref.get("edges") or [])
    counts = [float(live.get(b, 0.0)) for b in numeric_bins(edges)]
    present = sum(counts)
    mean = float(live.get("sum", 0.0)) / present if present else None
    out: dict[str, Any] = {
        "rows": present,
        "reference_mean": ref.get("mean"),
        "mean": mean,
        "shift": mean - ref["mean"] if mean is not None and ref.get("mean") is not None else None,
    }
    _score(out, list(ref.get("proportions") or []), counts, _interval_labels(edges), warn, alert)
    return out


def drift_report(
    reference: Mapping[str, Any] | None,
    counts: Mapping[str, Counts],
    warn: float,
    alert: float,
    feature_order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every signal for one version: features, output drift, confidence; worst status."""
    if not reference:
        return {
            "reference": False,
            "note": NO_REFERENCE,
            "status": "no_reference",
            "features": [],
            "output": None,
            "confidence": None,
        }
    ref_features: Mapping[str, Any] = reference.get("features", {})
    names = list(feature_order or ref_features)
    features = []
    for name in names:
        ref = ref_features.get(name)
        if ref is None:
            continue
        build = _BUILDERS.get(ref.get("kind"), numeric_feature)
        features.append(build(name, ref, counts.get(name, {}), warn, alert))
    output = output_drift(reference.get("prediction"), counts.get(PREDICTION, {}), warn, alert)
    confidence = confidence_shift(
        reference.get("confidence"), counts.get(CONFIDENCE, {}), warn, alert
    )
    statuses = [f["status"] for f in features] + ([output["status"]] if output else [])
    return {
        "reference": True,
        "note": None,
        "status": worst(statuses),
        "features": features,
        "output": output,
        "confidence": confidence,
    }


_BUILDERS = {"categorical": categorical_feature, "text": text_feature}


def _common(
    name: str, kind: str, ref: Mapping[str, Any], present: float, missing: float
) -> dict[str, Any]:
    total = present + missing
    return {
        "name": name,
        "kind": kind,
        "rows": total,
        "missing_rate": missing / total if total else None,
        "reference_missing_rate": ref.get("missing_rate"),
    }


def _score(
    out: dict[str, Any],
    expected: list[float],
    counts: list[float],
    labels: list[str],
    warn: float,
    alert: float,
) -> None:
    present = sum(counts)
    ok = present >= MIN_ROWS and len(expected) == len(counts) and sum(expected) > 0
    out["psi"] = psi(expected, counts) if ok else None
    out["p_value"] = chi2_pvalue(expected, counts) if ok else None
    out["status"] = status(out["psi"], warn, alert)
    out["histogram"] = {
        "bins": labels,
        "reference": [float(x) for x in expected],
        "live": [c / present if present else 0.0 for c in counts],
    }


def _interval_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all"]
    cuts = [f"{e:.4g}" for e in edges]
    return [f"< {cuts[0]}", *(f"{a}..{b}" for a, b in pairwise(cuts)), f">= {cuts[-1]}"]
