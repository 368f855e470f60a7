"""Reference statistics of a version's training data, stored in its metadata for drift checks.

Numeric features: quantile cut points (`edges`, interior, so values below/above the reference
fall in the first/last bin) with the reference proportion of each bin, plus mean, std, min,
max and missing rate. Categorical features: category frequencies. Text features: the same bins
of their length in characters, and `oov_rate`, the share of their tokens out of the fitted
vectorizer's vocabulary (null without one: HashingVectorizer). Outputs: the prediction
distribution and, for classifiers, the confidence (max probability) histogram.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from serving.features import text
from serving.features.schema import NUMERIC_KINDS, TEXT, InputSchema

MAX_ROWS = 100_000  # rows summarised (a uniform sample beyond that)
MAX_PREDICT_ROWS = 10_000  # rows run through the model for the output distributions
MAX_CATEGORIES = 50  # the rest is summed into "__other__"
QUANTILES = np.linspace(0.1, 0.9, 9)
CONFIDENCE_EDGES = [round(x, 2) for x in np.linspace(0.1, 0.9, 9)]


def reference_statistics(
    model: Any, schema: InputSchema, columns: list[pd.Series], task: str
) -> dict[str, Any]:
    frame = pd.concat(columns, axis=1)
    if len(frame) > MAX_ROWS:
        frame = frame.sample(MAX_ROWS, random_state=0)
    vocabularies = text.vocabularies(model, schema.labels, schema.kinds)
    features = {
        label: _feature(frame.iloc[:, j], kind, vocabularies.get(j))
        for j, (label, kind) in enumerate(zip(schema.labels, schema.kinds))
    }
    stats: dict[str, Any] = {"rows": len(frame), "features": features}
    stats.update(_outputs(model, schema, frame.dropna().head(MAX_PREDICT_ROWS), task))
    return stats


def numeric_histogram(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts per bin for interior cut points `edges` (len(edges) + 1 bins)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(index, minlength=len(edges) + 1).tolist()


def _feature(column: pd.Series, kind: str, vocabulary: text.Vocabulary | None) -> dict[str, Any]:
    if kind in NUMERIC_KINDS:
        return _numeric(column)
    if kind != TEXT:
        return _categorical(column)
    values = column.tolist()
    out = _numeric(pd.Series(text.lengths(values))) | {"kind": TEXT}
    tokens, oov = text.oov_counts(vocabulary, values) if vocabulary else (0, 0)
    return out | {"oov_rate": _rate(oov, tokens) if vocabulary else None}


def _numeric(column: pd.Series) -> dict[str, Any]:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    present = values[np.isfinite(values)]
    out: dict[str, Any] = {
        "kind": "numeric",
        "missing_rate": _rate(len(values) - len(present), len(values)),
    }
    if not len(present):
        return out | {"edges": [], "proportions": [1.0]}
    edges = np.unique(np.quantile(present, QUANTILES)).tolist()
    counts = numeric_histogram(present, edges)
    return out | {
        "edges": edges,
        "proportions": [c / len(present) for c in counts],
        "mean": float(present.mean()),
        "std": float(present.std()),
        "min": float(present.min()),
        "max": float(present.max()),
    }


def _categorical(column: pd.Series) -> dict[str, Any]:
    present = column.dropna().astype(str)
    shares = present.value_counts(normalize=True)
    top = shares.head(MAX_CATEGORIES)
    return {
        "kind": "categorical",
        "missing_rate": _rate(len(column) - len(present), len(column)),
        "frequencies": {str(k): float(v) for k, v in top.items()},
        "other": float(max(0.0, 1.0 - top.sum())),
    }


def _outputs(model: Any, schema: InputSchema, frame: pd.DataFrame, task: str) -> dict[str, Any]:
    if frame.empty:
        return {}
    rows = [list(row) for row in frame.itertuples(index=False)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            features = schema.convert([[_plain(v) for v in row] for row in rows])
            predictions = np.asarray(model.predict(features))
            proba = (
                model.predict_proba(features)
                if task == "classifier" and hasattr(model, "predict_proba")
                else None
            )
    except Exception:  # statistics are a bonus: a model that cannot score its reference rows
        return {}  # was already refused by the smoke test, or has odd inputs; skip quietly
    out: dict[str, Any] = {}
    if predictions.ndim != 1:  # multi-output or multilabel: no output distribution (yet)
        return out
    if task == "classifier":
        labels, counts = np.unique(predictions.astype(str), return_counts=True)
        out["prediction"] = {
            "kind": "classes",
            "proportions": {str(k): c / len(predictions) for k, c in zip(labels, counts)},
        }
    elif predictions.dtype.kind in "fiu" and predictions.ndim == 1:
        out["prediction"] = _numeric(pd.Series(predictions))
    if proba is not None:
        confidence = np.max(proba, axis=1)
        counts = numeric_histogram(confidence, CONFIDENCE_EDGES)
        out["confidence"] = {
            "edges": CONFIDENCE_EDGES,
            "proportions": [c / len(confidence) for c in counts],
            "mean": float(confidence.mean()),
        }
    return out


def _rate(part: int, whole: int) -> float:
    return float(part / whole) if whole else 0.0


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
