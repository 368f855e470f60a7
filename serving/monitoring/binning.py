"""Binning one version's live inputs and outputs against its reference bins, into counts.

A request's features, predictions and probabilities become additions to (model, version, minute,
feature, bin) counts: one vectorised `np.searchsorted` per numeric feature, value counts per
categorical one, the length in characters of a text one (and its tokens out of the fitted
vocabulary, when the worker's model is given). Requests of the same shape are merged first
(`batches`, `merge`), so a pass bins many requests at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from serving.features import text
from serving.features.schema import NUMERIC, NUMERIC_KINDS, TEXT, InputSchema
from serving.monitoring.counts import Key, bucket_of
from serving.monitoring.drift import CONFIDENCE, OTHER, PREDICTION, ROWS

MERGE_ROWS = 20_000  # rows binned in one pass at most (bounds one hold of the GIL)


class Profile:
    """How to bin one version's inputs and outputs: its schema and reference bins; `model`
    (the fitted model, optional) gives the vocabularies of text features."""

    def __init__(self, metadata: dict[str, Any], model: Any = None) -> None:
        schema = InputSchema.from_metadata(metadata)
        reference = metadata.get("reference_stats") or {}
        ref_features = reference.get("features") or {}
        has_text = model is not None and TEXT in schema.kinds
        vocabularies = text.vocabularies(model, schema.labels, schema.kinds) if has_text else {}
        self.features: list[tuple[int, str, str, Any]] = []
        for j, (label, kind) in enumerate(zip(schema.labels, schema.kinds)):
            ref = ref_features.get(label)
            if not ref:
                continue
            if kind in (*NUMERIC_KINDS, TEXT) and ref.get("kind") in ("numeric", TEXT):
                edges = np.asarray(ref.get("edges") or [], dtype=np.float64)
                low, high = ref.get("min", -np.inf), ref.get("max", np.inf)
                spec = (edges, low, high)
                if kind == TEXT:
                    self.features.append((j, label, TEXT, (spec, vocabularies.get(j))))
                else:
                    self.features.append((j, label, NUMERIC, spec))
            elif ref.get("kind") == "categorical":
                self.features.append((j, label, "categorical", set(ref.get("frequencies", {}))))
        self.classifier = metadata.get("task") == "classifier"
        prediction = reference.get("prediction") or {}
        self.prediction_edges = (
            np.asarray(prediction["edges"], dtype=np.float64)
            if prediction.get("kind") == "numeric" and "edges" in prediction
            else None
        )
        confidence = reference.get("confidence") or {}
        self.confidence_edges = np.asarray(
            confidence.get("edges") or drift_confidence_edges(), dtype=np.float64
        )


def drift_confidence_edges() -> list[float]:
    from serving.store.reference import CONFIDENCE_EDGES

    return list(CONFIDENCE_EDGES)


def add_request(
    counts: dict[Key, float],
    profile: Profile,
    model: str,
    version: int,
    at: float,
    features: Any,
    predictions: Any,
    probabilities: Any,
) -> None:
    """Add one (possibly merged) request's rows to `counts`, in the minute of `at`."""
    base = (model, version, bucket_of(at))
    counts[(*base, ROWS, "n")] += len(predictions)
    if features is not None:
        for j, label, kind, spec in profile.features:
            column = _column(features, j)
            if kind == NUMERIC:
                _add_numeric(counts, (*base, label), column, *spec)
            elif kind == TEXT:
                _add_text(counts, (*base, label), column, *spec)
            else:
                _add_categorical(counts, (*base, label), column, spec)
    _add_outputs(counts, profile, base, np.asarray(predictions), probabilities)


def _add_outputs(
    counts: dict[Key, float],
    profile: Profile,
    base: tuple[str, int, int],
    preds: np.ndarray,
    probabilities: Any,
) -> None:
    """Predicted classes (or binned values) and the confidence of each row.

    A multi-output answer (2-D) has no output distribution (its reference has none either)."""
    if preds.ndim != 1:
        pass
    elif profile.classifier:
        labels, n = np.unique(preds.astype(str), return_counts=True)
        for label, c in zip(labels.tolist(), n.tolist()):
            counts[(*base, PREDICTION, label)] += c
    elif profile.prediction_edges is not None and preds.ndim == 1 and preds.dtype.kind in "fiu":
        _add_numeric(counts, (*base, PREDICTION), preds, profile.prediction_edges, None, None)
    if probabilities is not None:
        confidence = np.max(np.asarray(probabilities, dtype=np.float64), axis=1)
        _add_numeric(counts, (*base, CONFIDENCE), confidence, profile.confidence_edges, None, None)


def batches(items: list[tuple[Any, Any, Any]]) -> Any:
    """`items` in runs of at most `MERGE_ROWS` predicted rows (and at least one item)."""
    batch: list[tuple[Any, Any, Any]] = []
    rows = 0
    for item in items:
        n = len(item[1]) if item[1] is not None else 0
        if batch and rows + n > MERGE_ROWS:
            yield batch
            batch, rows = [], 0
        batch.append(item)
        rows += n
    if batch:
        yield batch


def merge(batch: list[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """One (features, predictions, probabilities) for requests of the same shape."""
    if len(batch) == 1:
        return batch[0]
    features = [f for f, _, _ in batch]
    if features[0] is None:
        merged = None
    elif isinstance(features[0], np.ndarray):
        merged = np.concatenate(features)
    elif isinstance(features[0], pd.DataFrame):
        merged = pd.concat(features, ignore_index=True)
    else:
        raise TypeError(f"cannot merge {type(features[0]).__name__}")
    if any(p is None for _, p, _ in batch):
        raise TypeError("a request without predictions")
    predictions = np.concatenate([np.asarray(p) for _, p, _ in batch])
    probabilities = None
    if batch[0][2] is not None:
        probabilities = np.concatenate([np.asarray(p, dtype=np.float64) for _, _, p in batch])
    return merged, predictions, probabilities


def _column(features: Any, j: int) -> Any:
    if isinstance(features, pd.DataFrame):
        return features.iloc[:, j].to_numpy()
    array = np.asarray(features)
    return array if array.ndim == 1 else array[:, j]  # 1-D: a bare text model's strings


def _add_text(
    counts: dict[Key, float],
    prefix: tuple[str, int, int, str],
    column: Any,
    spec: tuple[np.ndarray, float, float],
    vocabulary: text.Vocabulary | None,
) -> None:
    """A text feature: its length bins, and its tokens out of the vocabulary (if known)."""
    values = column.tolist()
    _add_numeric(counts, prefix, text.lengths(values), *spec)
    if vocabulary is not None:
        tokens, oov = text.oov_counts(vocabulary, values)
        counts[(*prefix, "tokens")] += tokens
        counts[(*prefix, "oov")] += oov


def _add_numeric(
    counts: dict[Key, float],
    prefix: tuple[str, int, int, str],
    column: Any,
    edges: np.ndarray,
    low: float | None,
    high: float | None,
) -> None:
    values = np.asarray(column, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        counts[(*prefix, "missing")] += float(len(values) - finite.sum())
        values = values[finite]
    if not len(values):
        return
    index = np.searchsorted(edges, values, side="right")
    binned = np.bincount(index, minlength=len(edges) + 1)
    for i in np.flatnonzero(binned).tolist():
        counts[(*prefix, f"b{i}")] += float(binned[i])
    counts[(*prefix, "sum")] += float(values.sum())
    if low is not None and high is not None:
        below, above = int((values < low).sum()), int((values > high).sum())
        if below:
            counts[(*prefix, "below")] += below
        if above:
            counts[(*prefix, "above")] += above


def _add_categorical(
    counts: dict[Key, float], prefix: tuple[str, int, int, str], column: Any, known: set[str]
) -> None:
    values = pd.Series(column, dtype=object)
    present = values.dropna().astype(str)
    missing = len(values) - len(present)
    if missing:
        counts[(*prefix, "missing")] += missing
    for label, c in present.value_counts().items():
        counts[(*prefix, label if label in known else OTHER)] += int(c)
