"""Numpy kernels for linear pipelines: used only when they answer as scikit-learn does."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from serving.runtime import kernels
from serving.runtime.loader import ModelLoader
from serving.store.model_store import ModelStore
from serving.telemetry.metrics import Metrics


def _frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])


def _binary() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = make_classification(n_samples=400, n_features=12, random_state=1)
    return _frame(x * 50 + 7), np.where(y == 1, "spam", "ham")


def _multiclass() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = make_classification(
        n_samples=600, n_features=10, n_informative=6, n_classes=4, random_state=2
    )
    return _frame(x), y


def _regression() -> tuple[pd.DataFrame, np.ndarray]:
    x, y = make_regression(n_samples=300, n_features=8, noise=3.0, random_state=3)
    return _frame(x), y


CASES = {
    "binary-lr": (lambda: make_pipeline(StandardScaler(), LogisticRegression()), _binary, True),
    "multinomial-lr": (
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        _multiclass,
        True,
    ),
    "bare-lr": (lambda: LogisticRegression(max_iter=1000), _multiclass, True),
    "sgd": (lambda: make_pipeline(StandardScaler(), SGDClassifier(random_state=0)), _binary, True),
    "ridge": (lambda: make_pipeline(StandardScaler(with_mean=False), Ridge()), _regression, True),
    "linear-regression": (lambda: LinearRegression(), _regression, True),
    "forest": (lambda: RandomForestClassifier(n_estimators=5, random_state=0), _binary, False),
    "minmax-lr": (lambda: make_pipeline(MinMaxScaler(), LogisticRegression()), _binary, False),
}


@pytest.mark.parametrize("case", CASES)
def test_compile_linear_knows_linear_pipelines_only(case: str) -> None:
    build, data, supported = CASES[case]
    frame, y = data()
    model = build().fit(frame, y)
    kernel = kernels.compile_linear(model)
    assert (kernel is not None) == supported
    if kernel is None:
        return
    rng = np.random.default_rng(5)
    rows = np.ascontiguousarray(frame.to_numpy()[:50] + rng.normal(0, 0.5, (50, frame.shape[1])))
    with _quiet():
        want = model.predict(rows)
    got = kernel.predict(rows)
    assert got.dtype == want.dtype
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-12)
    else:
        np.testing.assert_array_equal(got, want)
        # one row at a time too: what the server does most
        np.testing.assert_array_equal(kernel.predict(rows[:1]), want[:1])
    if hasattr(model, "predict_proba"):
        with _quiet():
            np.testing.assert_allclose(
                kernel.predict_proba(rows), model.predict_proba(rows), rtol=1e-12, atol=1e-15
            )
    assert kernels.verify(kernel, model, rows, hasattr(model, "predict_proba")) is None


def test_verify_names_what_differs() -> None:
    frame, y = _multiclass()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame, y)
    kernel = kernels.compile_linear(model)
    assert kernel is not None
    rows = kernels.check_rows(frame.to_numpy()[:3], None, list(frame.columns))
    kernel._intercept = kernel._intercept + np.array([5.0, 0.0, 0.0, 0.0])  # a wrong kernel
    with _quiet():
        assert kernels.verify(kernel, model, rows, True) == "labels differ"
        kernel._intercept = kernel._intercept - np.array([5.0 - 1e-6, 0.0, 0.0, 0.0])
        assert kernels.verify(kernel, model, rows, True) == "probabilities differ"


def test_check_rows_spread_like_the_reference() -> None:
    sample = np.array([[1.0, 1000.0]])
    stats = {"features": {"a": {"mean": 0.0, "std": 1.0}, "b": {"mean": 500.0, "std": 100.0}}}
    rows = kernels.check_rows(sample, stats, ["a", "b"])
    assert rows.shape == (257, 2) and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows[0], sample[0])
    assert abs(rows[1:, 0].mean()) < 0.5 and 300 < rows[1:, 1].mean() < 700
    assert rows[1:, 1].std() > 100  # spread twice the reference std: both sides of boundaries


# -- through the loader and the API ------------------------------------------------------------


@pytest.fixture
def linear_store(store: ModelStore, tmp_path: Path) -> ModelStore:
    frame, y = _binary()
    path = tmp_path / "spam.joblib"
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y), path)
    reference = tmp_path / "spam.csv"
    frame.to_csv(reference, index=False)
    store.register("spam", path, reference_data=reference, activate=True, actor="test")
    forest = tmp_path / "forest.joblib"
    joblib.dump(RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, y), forest)
    store.register("forest", forest, activate=True, actor="test")
    return store


def test_loader_serves_a_verified_kernel(linear_store: ModelStore) -> None:
    loader = ModelLoader(linear_store, Metrics())
    loader.refresh()
    assert loader.resolve("spam").runtime == "numpy-linear"
    assert loader.resolve("forest").runtime == "sklearn"
    off = ModelLoader(linear_store, Metrics(), kernels=False)
    off.refresh()
    assert off.resolve("spam").runtime == "sklearn"


def test_loader_refuses_a_kernel_that_answers_differently(
    linear_store: ModelStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = kernels.compile_linear

    def broken(model: object) -> kernels.LinearKernel | None:
        kernel = real(model)
        if kernel is not None:
            kernel._coef_t = -kernel._coef_t  # fault injection: a kernel with a wrong sign
        return kernel

    monkeypatch.setattr(kernels, "compile_linear", broken)
    loader = ModelLoader(linear_store, Metrics())
    with caplog.at_level(logging.WARNING, logger="serving.runtime.prepare"):
        loader.refresh()
    loaded = loader.resolve("spam")
    assert loaded.runtime == "sklearn"  # still served, by scikit-learn
    assert any("kernel is not used (labels differ)" in r.getMessage() for r in caplog.records)


def test_api_answers_the_same_with_and_without_kernels(
    linear_store: ModelStore, make_app: Callable[..., Flask]
) -> None:
    frame, _ = _binary()
    rows = (frame.to_numpy()[:40] * 1.3).tolist()
    body = {"instances": rows, "return_proba": True}
    fast = make_app().test_client()
    slow = make_app(fast_kernels=False).test_client()
    assert fast.get("/v1/models/spam").get_json()["runtime"] == "numpy-linear"
    assert slow.get("/v1/models/spam").get_json()["runtime"] == "sklearn"
    a = fast.post("/v1/models/spam/predict", json=body).get_json()
    b = slow.post("/v1/models/spam/predict", json=body).get_json()
    assert a["predictions"] == b["predictions"]
    assert set(a["predictions"]) == {"spam", "ham"}
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-12, atol=1e-15)
    one = fast.post("/v1/models/spam/predict", json={"instances": rows[:1]}).get_json()
    assert one["predictions"] == b["predictions"][:1]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Models fitted on DataFrames warn when given arrays, as the server gives them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
