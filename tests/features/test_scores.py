"""Scores, not only labels: `decision_function` (or an outlier detector's `score_samples`)
recorded at register and served on request: `return_scores` on /v1, the `scores` output on V2,
`--scores` columns in batch. Each answer is compared with the estimator's own method; models
without one, and compiled (ONNX) versions, refuse in words."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import SVC

from serving.cli.main import main
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["a", "b", "c"]
# name -> (method served, scores per row)
SCORED = {"svc": ("decision_function", 1), "lr3": ("decision_function", 3)}
SCORED["isoforest"] = ("decision_function", 1)
UNSCORED = {"forest": "is a classifier without decision_function", "ridge": "is a regressor"}


def _frame(n: int = 90, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(n, 3)), columns=COLUMNS)


def _fit(kind: str, frame: pd.DataFrame) -> Any:
    binary = (frame.a + frame.b > 0).astype(int)
    three = np.digitize(frame.a, [-0.5, 0.5])
    models = {
        "svc": lambda: SVC().fit(frame, binary),
        "lr3": lambda: LogisticRegression().fit(frame, np.array(["x", "y", "z"])[three]),
        "isoforest": lambda: IsolationForest(n_estimators=20, random_state=0).fit(frame),
        "forest": lambda: RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, binary),
        "ridge": lambda: Ridge().fit(frame, frame.a + frame.c),
    }
    return models[kind]()


ROWS = _frame(5, seed=1).to_numpy().tolist()


@pytest.fixture
def registered(store: ModelStore, tmp_path: Path) -> dict[str, Any]:
    frame = _frame()
    reference = tmp_path / "train.csv"
    frame.to_csv(reference, index=False)
    models = {}
    for kind in [*SCORED, *UNSCORED]:
        models[kind] = _fit(kind, frame)
        joblib.dump(models[kind], tmp_path / f"{kind}.joblib")
        args = ["--store", str(store.root), "models", "register", kind]
        args += [str(tmp_path / f"{kind}.joblib"), "--reference-data", str(reference)]
        assert main([*args, "--activate"]) == 0
    return models


@pytest.fixture
def client(registered: dict[str, Any], make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


def _want(model: Any, kind: str, rows: list[list[float]]) -> np.ndarray:
    method = getattr(model, SCORED[kind][0])
    return np.asarray(method(pd.DataFrame(rows, columns=COLUMNS)), dtype=float)


@pytest.mark.parametrize("kind", list(SCORED))
def test_register_records_the_score_method_and_width(
    store: ModelStore, registered: dict[str, Any], kind: str
) -> None:
    metadata = store.read_metadata(kind, 1)
    assert (metadata["scores"], metadata["score_width"]) == SCORED[kind]


@pytest.mark.parametrize("kind", list(SCORED))
def test_v1_return_scores_are_the_models_own(
    client: FlaskClient, registered: dict[str, Any], kind: str
) -> None:
    for instances in (ROWS, [dict(zip(COLUMNS, row)) for row in ROWS]):
        body = {"instances": instances, "return_scores": True}
        response = client.post(f"/v1/models/{kind}/predict", json=body)
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()
        np.testing.assert_allclose(answer["scores"], _want(registered[kind], kind, ROWS))
        assert (
            answer["predictions"]
            == registered[kind].predict(pd.DataFrame(ROWS, columns=COLUMNS)).tolist()
        )
    plain = client.post(f"/v1/models/{kind}/predict", json={"instances": ROWS}).get_json()
    assert "scores" not in plain


@pytest.mark.parametrize("kind", list(SCORED))
def test_v2_scores_output_is_advertised_and_served(
    client: FlaskClient, registered: dict[str, Any], kind: str
) -> None:
    width = SCORED[kind][1]
    shape = [-1, width] if width > 1 else [-1]
    outputs = client.get(f"/v2/models/{kind}").get_json()["outputs"]
    assert {"name": "scores", "datatype": "FP64", "shape": shape} in outputs
    tensor = {"name": "input-0", "shape": [len(ROWS), 3], "datatype": "FP64", "data": ROWS}
    body = {"inputs": [tensor], "outputs": [{"name": "predict"}, {"name": "scores"}]}
    response = client.post(f"/v2/models/{kind}/infer", json=body)
    assert response.status_code == 200, response.get_json()
    scores = {o["name"]: o for o in response.get_json()["outputs"]}["scores"]
    want = _want(registered[kind], kind, ROWS)
    assert scores["shape"] == list(want.shape)
    np.testing.assert_allclose(np.reshape(scores["data"], want.shape), want)


@pytest.mark.parametrize("kind", list(UNSCORED))
def test_models_without_scores_refuse_in_words(client: FlaskClient, kind: str) -> None:
    body = {"instances": ROWS, "return_scores": True}
    response = client.post(f"/v1/models/{kind}/predict", json=body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert UNSCORED[kind] in error["message"] and error["details"] == {
        "return_scores": ["not available for this model"]
    }
    tensor = {"name": "input-0", "shape": [len(ROWS), 3], "datatype": "FP64", "data": ROWS}
    body = {"inputs": [tensor], "outputs": [{"name": "scores"}]}
    v2 = client.post(f"/v2/models/{kind}/infer", json=body)
    assert v2.status_code == 400 and "decision_function" in v2.get_json()["error"]


def test_scores_bypass_the_prediction_cache(
    registered: dict[str, Any], make_app: Callable[..., Flask]
) -> None:
    client = make_app(prediction_cache=100).test_client()
    body = {"instances": ROWS[:1]}
    for _ in range(2):
        assert client.post("/v1/models/svc/predict", json=body).status_code == 200
    cached = client.post("/v1/models/svc/predict", json=body)
    assert cached.headers["X-Cache"] == "hit"
    scored = client.post("/v1/models/svc/predict", json={**body, "return_scores": True})
    assert scored.headers.get("X-Cache") != "hit"
    np.testing.assert_allclose(
        scored.get_json()["scores"], _want(registered["svc"], "svc", ROWS[:1])
    )


@pytest.mark.parametrize(
    ("kind", "columns"), [("svc", ["score"]), ("lr3", ["score_x", "score_y", "score_z"])]
)
def test_batch_scores_columns(
    store: ModelStore, registered: dict[str, Any], tmp_path: Path, kind: str, columns: list[str]
) -> None:
    frame = _frame(40, seed=3)
    data, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(data, index=False)
    command = [sys.executable, "-m", "serving", "--store", str(store.root), "batch", kind]
    result = subprocess.run(
        [*command, str(data), "-o", str(out), "--scores"],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()
    scored = pd.read_csv(io.BytesIO(out.read_bytes()))
    want = _want(registered[kind], kind, frame.to_numpy().tolist())
    np.testing.assert_allclose(scored[columns].to_numpy(), want.reshape(len(frame), -1))


def test_batch_scores_of_a_model_without_them_is_refused(
    store: ModelStore, registered: dict[str, Any], tmp_path: Path
) -> None:
    data = tmp_path / "in.csv"
    _frame(5).to_csv(data, index=False)
    command = [sys.executable, "-m", "serving", "--store", str(store.root), "batch", "ridge"]
    result = subprocess.run(
        [*command, str(data), "--scores"], capture_output=True, timeout=120, cwd=ROOT
    )
    assert result.returncode != 0
    assert "--scores needs a model with decision_function" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_a_compiled_version_refuses_scores_and_says_where_they_are(
    store: ModelStore, registered: dict[str, Any], make_app: Callable[..., Flask]
) -> None:
    assert main(["--store", str(store.root), "--actor", "t", "optimize", "lr3", "1", "--onnx"]) == 0
    compiled = store.read_metadata("lr3", 2)
    assert compiled["format"] == "onnx" and compiled["scores"] is None
    client = make_app().test_client()
    body = {"instances": ROWS, "return_scores": True}
    response = client.post("/v1/models/lr3/versions/2/predict", json=body)
    assert response.status_code == 422, response.get_json()
    assert "is compiled to ONNX" in response.get_json()["error"]["message"]
    outputs = client.get("/v2/models/lr3/versions/2").get_json()["outputs"]
    assert "scores" not in [o["name"] for o in outputs]
