"""Linear kernels: a fitted linear pipeline answered by plain numpy, without per-call checks.

scikit-learn spends ~150 µs of a single-row `Pipeline.predict` on input validation, namespace
dispatch and metadata routing; the arithmetic of a scaled linear model is a few µs. The server
has already validated and converted the input (a C-contiguous float64 array of the right width),
so a kernel runs the *same* operations in the same order as scikit-learn, once:

    StandardScaler:      X = (X - mean_) / scale_             (on a copy, as transform does)
    linear classifier:   scores = X @ coef_.T + intercept_    predict = classes_[argmax | > 0]
    LogisticRegression:  predict_proba = expit (binary) or softmax (multinomial)
    linear regressor:    X @ coef_.T + intercept_

A kernel is only used after it gave the same answers as the model on check rows at load time
(`verify`); any estimator or step it does not know keeps the scikit-learn path.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.special import expit

_CLASSIFIERS = {"LogisticRegression", "LinearSVC", "RidgeClassifier", "SGDClassifier"}
_REGRESSORS = {"LinearRegression", "Ridge", "Lasso", "ElasticNet", "SGDRegressor"}
_PROBA_RTOL = 1e-9
_CHECK_ROWS = 256


class LinearKernel:
    """Answers like the fitted pipeline for dense float64 arrays of the fitted width."""

    runtime_name = "numpy-linear"

    def __init__(self, model: Any, scalers: list[tuple[Any, Any]], estimator: Any) -> None:
        self._model = model  # for anything the kernel does not compute itself
        self._scalers = scalers  # (mean or None, scale or None), applied in order
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        self._coef_t = coef.T if coef.ndim == 2 else coef
        self._intercept = np.asarray(estimator.intercept_, dtype=np.float64)
        self._classifier = type(estimator).__name__ in _CLASSIFIERS
        self.classes_ = getattr(estimator, "classes_", None)
        self._logistic = type(estimator).__name__ == "LogisticRegression"

    def _scores(self, X: np.ndarray) -> np.ndarray:
        for i, (mean, scale) in enumerate(self._scalers):
            if i == 0:
                X = X.copy()
            if mean is not None:
                X -= mean
            if scale is not None:
                X /= scale
        scores = X @ self._coef_t + self._intercept
        return scores.reshape(-1) if scores.ndim > 1 and scores.shape[1] == 1 else scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self._scores(X)
        if not self._classifier:
            return scores
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_.take(indices, axis=0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not self._logistic:
            return self._model.predict_proba(X)
        scores = self._scores(X)
        if scores.ndim == 1:  # binary: scikit-learn's _predict_proba_lr
            prob = expit(scores, out=scores)
            return np.stack([1 - prob, prob], axis=1)
        scores -= scores.max(axis=1).reshape(-1, 1)  # multinomial: extmath.softmax
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1).reshape(-1, 1)
        return scores


def compile_linear(model: Any) -> LinearKernel | None:
    """A kernel for `model` (an estimator or Pipeline) or None when it is not a known shape."""
    steps = [step for _, step in model.steps] if type(model).__name__ == "Pipeline" else [model]
    *transforms, estimator = steps
    kind = type(estimator).__name__
    if kind not in _CLASSIFIERS | _REGRESSORS or not hasattr(estimator, "coef_"):
        return None
    if kind in _CLASSIFIERS and getattr(estimator, "classes_", None) is None:
        return None
    if kind == "LogisticRegression" and _ovr_multiclass(estimator):
        return None  # one-vs-rest probabilities: leave them to scikit-learn
    scalers = []
    for step in transforms:
        if step is None or step == "passthrough":
            continue
        if type(step).__name__ != "StandardScaler":
            return None
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None
        scalers.append((_f64(mean), _f64(scale)))
    return LinearKernel(model, scalers, estimator)


def verify(kernel: LinearKernel, model: Any, rows: np.ndarray, can_proba: bool) -> str | None:
    """None when the kernel answers `rows` as the model does; else what differed."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "X does not have valid feature names": expected
        want, got = np.asarray(model.predict(rows)), np.asarray(kernel.predict(rows))
        if want.shape != got.shape:
            return f"prediction shape {got.shape} != {want.shape}"
        if want.dtype.kind in "fc":
            if not np.allclose(got, want, rtol=_PROBA_RTOL, atol=0.0, equal_nan=True):
                return "predictions differ"
        elif not np.array_equal(got, want):
            return "labels differ"
        if can_proba and kernel._logistic:
            p_want, p_got = model.predict_proba(rows), kernel.predict_proba(rows)
            if p_want.shape != p_got.shape or not np.allclose(
                p_got, p_want, rtol=_PROBA_RTOL, atol=1e-15
            ):
                return "probabilities differ"
    return None


def check_rows(sample: np.ndarray, stats: dict[str, Any] | None, names: list[str]) -> np.ndarray:
    """The sample rows plus random rows spread like the reference data (or around the sample)."""
    rng = np.random.default_rng(0)
    width = sample.shape[1]
    center, spread = sample.mean(axis=0), np.maximum(np.abs(sample).mean(axis=0), 1.0)
    features = (stats or {}).get("features") or {}
    for i, name in enumerate(names[:width]):
        ref = features.get(name) or {}
        if isinstance(ref.get("mean"), int | float) and isinstance(ref.get("std"), int | float):
            center[i], spread[i] = ref["mean"], max(ref["std"], 1e-12)
    noise = rng.standard_normal((_CHECK_ROWS, width)) * spread * 2 + center
    return np.ascontiguousarray(np.vstack([sample, noise]), dtype=np.float64)


def _ovr_multiclass(estimator: Any) -> bool:
    if len(getattr(estimator, "classes_", ())) <= 2:
        return False
    return getattr(estimator, "multi_class", "auto") == "ovr" or estimator.solver == "liblinear"


def _f64(values: Any) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)
