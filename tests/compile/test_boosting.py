"""`serving optimize --onnx` on the models people train: boosting libraries, missing values,
calibrated SVMs, clusterers and outlier detectors, each checked against its own predict."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import KMeans
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier, XGBRegressor

from serving.cli.main import main
from serving.compile.parity import ABS_TOL, REL_TOL
from serving.store.model_store import ModelStore

ROWS = 200  # training rows: small and fast, as are the models (few trees)
PROBA_TOL = 1e-5


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    features: int = 6
    target: str = "label"  # "label", "value" or "none" (unsupervised)
    train_nan: bool = False  # missing values in the training data
    nullable: bool = True  # registered as the probe says (else --not-nullable for all)
    labels: tuple[str, ...] = ()  # string class labels (3 classes) instead of 0/1


CASES = {
    "hgb-classifier": Case(
        lambda: HistGradientBoostingClassifier(max_iter=15, random_state=0),
        features=22,
        train_nan=True,
    ),
    "hgb-regressor": Case(
        lambda: HistGradientBoostingRegressor(max_iter=15, random_state=0),
        target="value",
        train_nan=True,
    ),
    "lgbm-classifier": Case(lambda: LGBMClassifier(n_estimators=10, verbose=-1)),
    "lgbm-classifier-with-nan": Case(
        lambda: LGBMClassifier(n_estimators=10, verbose=-1), train_nan=True
    ),
    "lgbm-regressor": Case(
        lambda: LGBMRegressor(n_estimators=10, verbose=-1), target="value", train_nan=True
    ),
    "xgb-classifier": Case(lambda: XGBClassifier(n_estimators=10, max_depth=3)),
    "xgb-classifier-with-nan": Case(
        lambda: XGBClassifier(n_estimators=10, max_depth=3), train_nan=True
    ),
    "xgb-regressor": Case(
        lambda: XGBRegressor(n_estimators=10, max_depth=3), target="value", train_nan=True
    ),
    "forest-with-nan": Case(
        lambda: RandomForestClassifier(n_estimators=10, random_state=0), train_nan=True
    ),
    "forest-regressor-with-nan": Case(
        lambda: RandomForestRegressor(n_estimators=10, random_state=0),
        target="value",
        train_nan=True,
    ),
    "tree-with-nan": Case(lambda: DecisionTreeClassifier(random_state=0), train_nan=True),
    "isolation-forest": Case(
        lambda: IsolationForest(n_estimators=20, random_state=0), target="none", nullable=False
    ),
    "calibrated-linear-svc": Case(
        lambda: Pipeline(
            [("scale", StandardScaler()), ("clf", CalibratedClassifierCV(LinearSVC()))]
        )
    ),
    "calibrated-linear-svc-3-classes": Case(
        lambda: CalibratedClassifierCV(LinearSVC()), labels=("high", "low", "mid")
    ),
    "kmeans": Case(lambda: KMeans(n_clusters=3, n_init=2, random_state=0), target="none"),
}


def _frame(case: Case, rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.normal(size=(rows, case.features)), columns=[f"x{i}" for i in range(case.features)]
    )
    value = frame["x0"] * 2 + frame["x1"] - frame["x2"] ** 2
    target = (value > 0).astype(int).to_numpy() if case.target == "label" else value.to_numpy()
    if case.labels:
        target = np.asarray(case.labels)[np.digitize(value, [-1.0, 1.0])]
    if case.train_nan:
        frame = frame.mask(rng.random(frame.shape) < 0.1)
    return frame, target


@pytest.fixture(scope="session")
def trained(artifacts_dir: Path) -> Callable[[str], tuple[Any, Path, Path]]:
    """name -> (fitted model, artifact, reference CSV), trained once per session."""
    done: dict[str, tuple[Any, Path, Path]] = {}

    def get(name: str) -> tuple[Any, Path, Path]:
        if name not in done:
            case = CASES[name]
            frame, target = _frame(case, ROWS, seed=0)
            model = case.build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence and library chatter
                model.fit(frame) if case.target == "none" else model.fit(frame, target)
            artifact, reference = artifacts_dir / f"{name}.joblib", artifacts_dir / f"{name}.csv"
            joblib.dump(model, artifact)
            frame.to_csv(reference, index=False)
            done[name] = (model, artifact, reference)
        return done[name]

    return get


def _register(store: ModelStore, name: str, artifact: Path, reference: Path, *flags: str) -> int:
    argv = ["--store", str(store.root), "--actor", "test", "models", "register", name]
    return main([*argv, str(artifact), "--reference-data", str(reference), *flags])


def _optimize(store: ModelStore, name: str, version: int) -> int:
    argv = ["--store", str(store.root), "--actor", "test", "optimize", name, str(version)]
    return main([*argv, "--onnx"])


def _rows(case: Case, nullable: bool) -> pd.DataFrame:
    """Rows the model has not seen; NaN in every third one where the features take it."""
    frame, _ = _frame(case, 30, seed=1)
    if nullable:
        rng = np.random.default_rng(2)
        for i in range(0, len(frame), 3):
            frame.iloc[i, rng.choice(case.features, size=2, replace=False)] = np.nan
    return frame


def _instances(frame: pd.DataFrame) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in frame.to_numpy()]


def _own(model: Any, frame: pd.DataFrame, method: str = "predict") -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(getattr(model, method)(frame))


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_version_answers_like_the_models_own_predict(
    store: ModelStore,
    trained: Callable[[str], tuple[Any, Path, Path]],
    make_app: Callable[..., Flask],
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    case = CASES[name]
    model, artifact, reference = trained(name)
    flags = [] if case.nullable else ["--not-nullable", ",".join(f"x{i}" for i in range(6))]
    assert _register(store, name, artifact, reference, "--activate", *flags) == 0
    nullable = any(f["nullable"] for f in store.read_metadata(name, 1)["features"])
    assert nullable == (case.nullable and not name.startswith(("calibrated", "kmeans")))
    assert _optimize(store, name, 1) == 0, capsys.readouterr().err
    summary = capsys.readouterr().err
    assert ("with missing values" in summary) == nullable, summary
    meta = store.read_metadata(name, 2)
    assert meta["format"] == "onnx" and meta["parity"]["ok"]
    assert (meta["parity"]["rows_with_missing_values"] > 0) == nullable

    rows = _rows(case, nullable)
    expected = _own(model, rows)
    classifier = case.target == "label"
    client = make_app().test_client()
    body = {"instances": _instances(rows), "return_proba": classifier}
    response = client.post(f"/v1/models/{name}/versions/2/predict", json=body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    if case.target == "value":
        got = np.asarray(answer["predictions"], dtype=float)
        assert np.all(np.abs(got - expected) <= ABS_TOL + REL_TOL * np.abs(expected))
    else:
        assert answer["predictions"] == expected.tolist()
        assert all(type(p) is (str if case.labels else int) for p in answer["predictions"])
    if classifier:
        proba = np.asarray(answer["probabilities"])
        assert np.abs(proba - _own(model, rows, "predict_proba")).max() <= PROBA_TOL

    complete = rows.dropna()
    v2 = {"inputs": [{"name": "input-0", "shape": list(complete.shape), "datatype": "FP64"}]}
    v2["inputs"][0]["data"] = complete.to_numpy().ravel().tolist()
    response = client.post(f"/v2/models/{name}/versions/2/infer", json=v2)
    assert response.status_code == 200, response.get_json()
    predict = response.get_json()["outputs"][0]
    assert predict["name"] == "predict"
    datatype = "FP64" if case.target == "value" else "BYTES" if case.labels else "INT64"
    assert predict["datatype"] == datatype
    if case.target != "value":
        assert predict["data"] == _own(model, complete).tolist()
        assert all(type(v) is (str if case.labels else int) for v in predict["data"])
    if not nullable:  # the ONNX version refuses null as its source does
        one = [None, *_instances(complete)[0][1:]]
        response = client.post(f"/v1/models/{name}/versions/2/predict", json={"instances": [one]})
        assert response.status_code == 422, response.get_json()


def test_isolation_forest_taking_nulls_is_refused_with_a_hint(
    store: ModelStore,
    trained: Callable[[str], tuple[Any, Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its ONNX trees send NaN elsewhere than scikit-learn does: only the NaN rows differ."""
    _, artifact, reference = trained("isolation-forest")
    assert _register(store, "iso", artifact, reference) == 0
    assert all(f["nullable"] for f in store.read_metadata("iso", 1)["features"])
    capsys.readouterr()
    assert _optimize(store, "iso", 1) == 1
    err = capsys.readouterr().err
    assert "does not match the original; not registered" in err
    hint = next(line for line in err.splitlines() if line.startswith("hint: "))
    assert "only on rows with missing values" in hint
    assert "--not-nullable x0,x1,x2,x3,x4,x5" in hint
    report = json.loads(err[err.index("{") :])
    assert report["ok"] is False and report["rows_with_missing_values"] > 0
    assert report["ok_on_rows_without_missing_values"] is True
    assert store.versions("iso") == [1]


def test_a_conversion_error_is_one_line_without_the_node_dump(
    store: ModelStore,
    trained: Callable[[str], tuple[Any, Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """skl2onnx wraps protobuf's refusal in a message that dumps every attribute of the node."""
    import skl2onnx

    def refuse(*args: Any, **kwargs: Any) -> None:
        try:
            raise TypeError("Field onnx.AttributeProto.ints: Expected an int, got a boolean.")
        except TypeError as exc:
            dump = "attributes={'nodes_values': array([" + "0.5, " * 5000 + "])}"
            raise ValueError(f"Unable to create node 'TreeEnsembleClassifier' and {dump}") from exc

    monkeypatch.setattr(skl2onnx, "convert_sklearn", refuse)
    _, artifact, reference = trained("hgb-classifier")
    assert _register(store, "hgb", artifact, reference) == 0
    capsys.readouterr()
    assert _optimize(store, "hgb", 1) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 400 and "nodes_values" not in err
    assert err.startswith("error: skl2onnx cannot convert HistGradientBoostingClassifier")
    assert "Expected an int, got a boolean" in err


def test_native_categorical_splits_are_refused_in_one_line(
    store: ModelStore, artifacts_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """skl2onnx converts them without complaint, and wrong: refused before the parity gate."""
    frame, target = _frame(Case(lambda: None), ROWS, seed=0)
    frame["x5"] = np.arange(ROWS) % 4.0
    model = HistGradientBoostingClassifier(max_iter=5, categorical_features=[5]).fit(frame, target)
    artifact, reference = artifacts_dir / "hgb-categorical.joblib", artifacts_dir / "hgb-cat.csv"
    joblib.dump(model, artifact)
    frame.to_csv(reference, index=False)
    assert _register(store, "hgbcat", artifact, reference) == 0
    capsys.readouterr()
    assert _optimize(store, "hgbcat", 1) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: cannot compile to ONNX: HistGradientBoostingClassifier uses native categorical "
        "splits (categorical_features), which skl2onnx's converter ignores"
    )
    assert store.versions("hgbcat") == [1]
