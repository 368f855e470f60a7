"""Models whose `predict` answers more than one column, and models that answer integer labels.

A multilabel OneVsRestClassifier and RandomForest (a 2-D 0/1 indicator y) and a multi-output
Ridge (2-D y) register with reference data, record `outputs`, and serve [N, k] answers on /v1,
V2 (metadata shape [-1, k]), /invocations and in batch (prediction_0, prediction_1, ...); each
answer is compared with the model's own predict. IsolationForest and KMeans answer INT64 on V2,
and a return_proba request to them is refused in words.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier

from serving.cli.main import main
from serving.monitoring.binning import Profile, add_request
from serving.monitoring.counts import bucket_of
from serving.monitoring.drift import PREDICTION
from serving.monitoring.drift import ROWS as ROWS_KEY
from serving.runtime.predict import PredictionResult
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["a", "b", "c"]


def _frame(n: int = 80, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(n, 3)), columns=COLUMNS)


def _fit(kind: str, frame: pd.DataFrame) -> Any:
    labels = np.stack([frame.a > 0, frame.b > 0, frame.c > 0.5], axis=1).astype(int)
    if kind == "ovr":
        return OneVsRestClassifier(LogisticRegression()).fit(frame, labels)
    if kind == "forest":
        return RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, labels)
    if kind == "ridge":
        return Ridge().fit(frame, np.stack([frame.a + frame.b, 2 * frame.c], axis=1))
    if kind == "isoforest":
        return IsolationForest(n_estimators=20, random_state=0).fit(frame)
    return KMeans(n_clusters=3, n_init=2, random_state=0).fit(frame)


MULTI = {"ovr": 3, "forest": 3, "ridge": 2}
LABELLERS = ["isoforest", "kmeans"]
ROWS = _frame(4, seed=1).to_numpy().tolist()


@pytest.fixture
def registered(store: ModelStore, tmp_path: Path) -> dict[str, Path]:
    """Every model above registered with its reference CSV and activated; name -> artifact."""
    frame = _frame()
    reference = tmp_path / "train.csv"
    frame.to_csv(reference, index=False)
    artifacts = {}
    for kind in [*MULTI, *LABELLERS]:
        artifacts[kind] = tmp_path / f"{kind}.joblib"
        joblib.dump(_fit(kind, frame), artifacts[kind])
        args = ["--store", str(store.root), "models", "register", kind, str(artifacts[kind])]
        assert main([*args, "--reference-data", str(reference), "--activate"]) == 0
    return artifacts


@pytest.fixture
def client(registered: dict[str, Path], make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


def expected(artifact: Path, rows: list[list[float]]) -> list[Any]:
    return joblib.load(artifact).predict(pd.DataFrame(rows, columns=COLUMNS)).tolist()


def same(answer: Any, want: Any) -> None:
    """The same shape and values (floats through JSON or CSV to 1e-12)."""
    np.testing.assert_allclose(np.asarray(answer, float), np.asarray(want, float), rtol=1e-12)


@pytest.mark.parametrize("kind", list(MULTI))
def test_multi_output_models_record_their_outputs(
    store: ModelStore, registered: dict[str, Path], kind: str
) -> None:
    metadata = store.read_metadata(kind, 1)
    assert metadata["outputs"] == MULTI[kind]
    assert metadata["classes"] is None and metadata["predict_proba"] is False
    assert "prediction" not in metadata["reference_stats"]


@pytest.mark.parametrize("kind", list(MULTI))
def test_v1_answers_one_row_per_instance_one_value_per_output(
    client: FlaskClient, registered: dict[str, Path], kind: str
) -> None:
    for instances in (ROWS, [dict(zip(COLUMNS, row)) for row in ROWS]):
        response = client.post(f"/v1/models/{kind}/predict", json={"instances": instances})
        assert response.status_code == 200, response.get_json()
        predictions = response.get_json()["predictions"]
        assert np.asarray(predictions).shape == (len(ROWS), MULTI[kind])
        same(predictions, expected(registered[kind], ROWS))
    assert client.get(f"/v1/models/{kind}").get_json()["outputs"] == MULTI[kind]


@pytest.mark.parametrize("kind", list(MULTI))
def test_v2_metadata_and_answer_have_one_column_per_output(
    client: FlaskClient, registered: dict[str, Path], kind: str
) -> None:
    outputs = client.get(f"/v2/models/{kind}").get_json()["outputs"]
    datatype = "FP64" if kind == "ridge" else "INT64"
    assert outputs == [{"name": "predict", "datatype": datatype, "shape": [-1, MULTI[kind]]}]
    tensor = {"name": "input-0", "shape": [len(ROWS), 3], "datatype": "FP64", "data": ROWS}
    response = client.post(f"/v2/models/{kind}/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()["outputs"][0]
    assert answer["datatype"] == datatype and answer["shape"] == [len(ROWS), MULTI[kind]]
    data = np.asarray(answer["data"]).reshape(answer["shape"])
    same(data, expected(registered[kind], ROWS))


@pytest.mark.parametrize("kind", list(MULTI))
def test_invocations_answer_one_list_per_row(
    registered: dict[str, Path], make_app: Callable[..., Flask], kind: str
) -> None:
    client = make_app(default_model=kind).test_client()  # /invocations scores the default
    body = {"dataframe_split": {"columns": COLUMNS, "data": ROWS}}
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.get_json()
    same(response.get_json()["predictions"], expected(registered[kind], ROWS))


@pytest.mark.parametrize("kind", list(MULTI))
def test_batch_writes_one_prediction_column_per_output(
    store: ModelStore, registered: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    frame = _frame(30, seed=3)
    data, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(data, index=False)
    command = [sys.executable, "-m", "serving", "--store", str(store.root), "batch"]
    result = subprocess.run(
        [*command, kind, str(data), "-o", str(out)], capture_output=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr.decode()
    scored = pd.read_csv(io.BytesIO(out.read_bytes()))
    names = [f"prediction_{k}" for k in range(MULTI[kind])]
    assert "prediction" not in scored.columns
    want = joblib.load(registered[kind]).predict(frame)
    same(scored[names].to_numpy(), want)


@pytest.mark.parametrize("kind", LABELLERS)
def test_integer_labels_are_int64_on_v2(
    client: FlaskClient, registered: dict[str, Path], kind: str
) -> None:
    outputs = client.get(f"/v2/models/{kind}").get_json()["outputs"]
    assert outputs[0] == {"name": "predict", "datatype": "INT64", "shape": [-1]}
    tensor = {"name": "input-0", "shape": [len(ROWS), 3], "datatype": "FP64", "data": ROWS}
    answer = client.post(f"/v2/models/{kind}/infer", json={"inputs": [tensor]}).get_json()
    assert answer["outputs"][0]["datatype"] == "INT64"
    assert answer["outputs"][0]["data"] == expected(registered[kind], ROWS)
    v1 = client.post(f"/v1/models/{kind}/predict", json={"instances": ROWS}).get_json()
    assert v1["predictions"] == expected(registered[kind], ROWS)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("isoforest", "is an outlier detector"),
        ("kmeans", "is a clusterer"),
        ("ridge", "has 2 outputs"),
    ],
    ids=["isoforest", "kmeans", "multi-output"],
)
def test_return_proba_is_refused_in_words(client: FlaskClient, kind: str, words: str) -> None:
    body = {"instances": ROWS, "return_proba": True}
    response = client.post(f"/v1/models/{kind}/predict", json=body)
    assert response.status_code == 422
    message = response.get_json()["error"]["message"]
    assert words in message and " a other" not in message


def test_a_multilabel_forest_registers_without_reference_data(
    store: ModelStore, tmp_path: Path, make_app: Callable[..., Flask]
) -> None:
    artifact = tmp_path / "forest.joblib"
    joblib.dump(_fit("forest", _frame()), artifact)
    args = ["--store", str(store.root), "models", "register", "forest", str(artifact)]
    assert main([*args, "--activate"]) == 0
    assert store.read_metadata("forest", 1)["reference_stats"] is None
    response = make_app().test_client().post("/v1/models/forest/predict", json={"instances": ROWS})
    assert response.status_code == 200, response.get_json()
    same(response.get_json()["predictions"], expected(artifact, ROWS))


def test_class_counts_skip_multi_output_answers() -> None:
    """Metadata that still lists classes for a multilabel model must not break the counters."""
    result = PredictionResult("m", 1, np.array([[0, 1], [1, 1]]), None, [0, 1], rows=2)
    assert result.class_counts() == []
    one = PredictionResult("m", 1, np.array([0, 1, 1]), None, [0, 1], rows=3)
    assert sorted(one.class_counts()) == [(0, 1), (1, 2)]


@pytest.mark.parametrize("kind", list(MULTI))
def test_drift_counts_take_multi_output_answers(
    store: ModelStore, registered: dict[str, Path], kind: str
) -> None:
    """Features are binned as for any model; a 2-D answer adds no prediction counts."""
    counts: dict[Any, float] = defaultdict(float)
    profile = Profile(store.read_metadata(kind, 1))
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    answer = joblib.load(registered[kind]).predict(frame)
    add_request(counts, profile, kind, 1, 0.0, frame, answer, None)
    assert counts[(kind, 1, bucket_of(0.0), ROWS_KEY, "n")] == len(ROWS)
    assert not [key for key in counts if key[3] == PREDICTION]
    assert [key for key in counts if key[3] == "a"]
