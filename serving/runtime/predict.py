"""Prediction core: validated instances in, plain JSON-able values out. No Flask here."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import InvalidInput
from serving.runtime.model import LoadedModel

_FEW_ROWS = 64


@dataclass(frozen=True)
class PredictionResult:
    model: str
    version: int
    predictions: Any  # a numpy array; serialised by orjson without a Python list in between
    probabilities: Any | None
    classes: list[Any] | None
    rows: int
    # The validated model input (array or DataFrame), for the drift monitor; not in the body.
    features: Any = field(default=None, repr=False, compare=False)
    # "hit" | "miss" | "bypass" with the prediction cache on (X-Cache); None when it is off.
    cache: str | None = field(default=None, compare=False)
    # decision_function / score_samples when asked (return_scores): [N] or [N, k]; else None.
    scores: Any | None = field(default=None, compare=False)

    def class_counts(self) -> list[tuple[Any, int]]:
        """(class, rows) pairs for the StatsD prediction counters of a classifier."""
        if self.classes is None or np.ndim(self.predictions) != 1:
            return []  # regressors, outlier detectors, clusterers; multi-output models
        if self.rows <= _FEW_ROWS:  # np.unique costs ~15 µs, most of it fixed
            predictions = self.predictions
            labels = predictions.tolist() if isinstance(predictions, np.ndarray) else predictions
            return list(Counter(labels).items())
        labels, counts = np.unique(self.predictions, return_counts=True)
        return list(zip(labels.tolist(), counts.tolist()))

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "predictions": self.predictions,
        }
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
            out["classes"] = self.classes
        if self.scores is not None:
            out["scores"] = self.scores
        return out


def predict(
    loaded: LoadedModel,
    instances: list[Any],
    return_proba: bool = False,
    max_instances: int | None = None,
    may_have_bools: bool = True,
    return_scores: bool = False,
) -> PredictionResult:
    """Validate JSON `instances` (rows or objects) against the version's schema; run the model."""
    _check_request(loaded, len(instances), return_proba, max_instances, return_scores)
    features = loaded.schema.convert(instances, may_have_bools)
    return _run(loaded, features, len(instances), return_proba, return_scores)


def predict_array(
    loaded: LoadedModel,
    array: np.ndarray,
    return_proba: bool = False,
    max_instances: int | None = None,
    return_scores: bool = False,
) -> PredictionResult:
    """The same for a numeric 2-D array (binary tensors, CSV bodies)."""
    rows = int(array.shape[0]) if array.ndim else 0
    _check_request(loaded, rows, return_proba, max_instances, return_scores)
    features = loaded.schema.convert_array(array)
    return _run(loaded, features, rows, return_proba, return_scores)


def _check_request(
    loaded: LoadedModel,
    rows: int,
    return_proba: bool,
    max_instances: int | None,
    return_scores: bool = False,
) -> None:
    if max_instances is not None and rows > max_instances:
        raise InvalidInput(
            f"too many instances: {rows} > {max_instances} per request",
            {"instances": [f"at most {max_instances} instances per request"]},
        )
    if return_proba and not loaded.can_proba:
        raise InvalidInput(
            f"return_proba needs a classifier with predict_proba; "
            f"{loaded.name} v{loaded.version} {loaded.why_no_proba}",
            {"return_proba": ["not available for this model"]},
        )
    if return_scores and loaded.score_method is None:
        raise InvalidInput(
            f"return_scores needs a model with decision_function or score_samples; "
            f"{loaded.name} v{loaded.version} {loaded.why_no_scores}",
            {"return_scores": ["not available for this model"]},
        )


def _run(
    loaded: LoadedModel, features: Any, rows: int, return_proba: bool, return_scores: bool = False
) -> PredictionResult:
    if return_scores:  # not cached: the cache's key and entries know labels and probabilities
        result = _compute(loaded, features, rows, return_proba)
        return dataclasses.replace(result, scores=_scores(loaded, features))
    if loaded.cache is not None:
        return loaded.cache.predict(
            loaded, features, return_proba, lambda: _compute(loaded, features, rows, return_proba)
        )
    return _compute(loaded, features, rows, return_proba)


def _compute(loaded: LoadedModel, features: Any, rows: int, return_proba: bool) -> PredictionResult:
    try:
        runner = loaded.runner  # the model, or a numpy kernel verified to answer the same
        predictions = runner.predict(features)
        probabilities = runner.predict_proba(features) if return_proba else None
    except (ValueError, TypeError, KeyError) as exc:
        # The model refused these values (an unknown category, a dtype it cannot take).
        raise InvalidInput(f"the model rejected the input: {exc}") from None
    return PredictionResult(
        model=loaded.name,
        version=loaded.version,
        predictions=_jsonable(predictions),
        # orjson needs C order; binary MLPs return a transposed (Fortran-order) array.
        probabilities=None if probabilities is None else np.ascontiguousarray(probabilities),
        classes=loaded.classes,
        rows=rows,
        features=features,
    )


def _scores(loaded: LoadedModel, features: Any) -> np.ndarray:
    """The version's score method on the validated input, float64 in C order."""
    try:
        scores = loaded.scores(features)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"the model rejected the input: {exc}") from None
    return np.ascontiguousarray(scores, dtype=np.float64)


def _jsonable(values: Any) -> Any:
    """orjson serialises numeric numpy arrays natively; object/string arrays become lists."""
    array = np.asarray(values)
    if array.dtype.kind in "fiub" and array.flags.c_contiguous:
        return array
    return array.tolist()
