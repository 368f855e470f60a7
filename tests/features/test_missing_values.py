"""Missing values where the model takes them: probed at register, accepted on every front door.

Real models trained here (a HistGradientBoostingClassifier fitted with NaN, an imputer pipeline
on mixed columns, a plain LogisticRegression that refuses NaN), registered with the command line
as the README says, served on /v1, /v2 and /invocations and scored by `serving batch`; every
answer is compared with the model's own predict on the same rows with NaN.
"""

from __future__ import annotations

import io
import json
import math
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
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

from serving.cli.main import main
from serving.store.artifacts import describe_model
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["a", "b", "c"]


def _numbers(n: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=NAMES)
    target = (frame["a"] + frame["b"] > 0).astype(int).to_numpy()
    frame.loc[rng.random(n) < 0.2, "a"] = np.nan  # trained with missing values in a
    return frame, target


@pytest.fixture
def hgb_artifact(tmp_path: Path) -> Path:
    frame, target = _numbers()
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(frame, target)
    path = tmp_path / "hgb.joblib"
    joblib.dump(model, path)
    return path


@pytest.fixture
def logistic_artifact(tmp_path: Path) -> Path:
    frame, target = _numbers()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.fillna(0.0), target)
    path = tmp_path / "logistic.joblib"
    joblib.dump(model, path)
    return path


@pytest.fixture
def imputer_artifact(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50.0, 10.0, 200),
            "age": rng.integers(18, 80, 200).astype(float),
            "plan": rng.choice(["basic", "pro"], 200),
        }
    )
    target = ((frame["income"] > 50) ^ (frame["plan"] == "pro")).astype(int)
    numeric = make_pipeline(SimpleImputer(), StandardScaler())
    columns = ColumnTransformer(
        [("num", numeric, ["income", "age"]), ("cat", OneHotEncoder(), ["plan"])]
    )
    model = Pipeline([("prep", columns), ("clf", LogisticRegression())]).fit(frame, target)
    path = tmp_path / "churn.joblib"
    joblib.dump(model, path)
    return path


def register(store: ModelStore, name: str, artifact: Path, *flags: str) -> None:
    """`serving models register NAME ARTIFACT --activate`, as the README says."""
    args = ["--store", str(store.root), "models", "register", name, str(artifact), "--activate"]
    assert main([*args, *flags]) == 0


def features(store: ModelStore, name: str) -> dict[str, bool]:
    return {f["name"]: f["nullable"] for f in store.read_metadata(name, 1)["features"]}


def test_register_probes_which_features_the_model_takes_missing(
    store: ModelStore, hgb_artifact: Path, logistic_artifact: Path, imputer_artifact: Path
) -> None:
    register(store, "hgb", hgb_artifact)
    register(store, "logistic", logistic_artifact)
    register(store, "churn", imputer_artifact)
    assert features(store, "hgb") == {"a": True, "b": True, "c": True}
    assert features(store, "logistic") == {"a": False, "b": False, "c": False}
    assert features(store, "churn") == {"income": True, "age": True, "plan": False}


def test_register_flags_override_the_probe(store: ModelStore, hgb_artifact: Path) -> None:
    register(store, "hgb", hgb_artifact, "--not-nullable", "b,c")
    assert features(store, "hgb") == {"a": True, "b": False, "c": False}


class _ThreadRecorder(RegressorMixin, BaseEstimator):
    """Answers 0 to anything, NaN included, noting the most threads a pool may use then."""

    n_features_in_ = 3

    def __init__(self) -> None:
        self.probes: list[int] = []

    def predict(self, x: Any) -> np.ndarray:
        if np.isnan(np.asarray(x, dtype=float)).any():
            self.probes.append(max(pool["num_threads"] for pool in threadpool_info()))
        return np.zeros(len(x))


def test_register_probes_missing_values_with_one_thread_per_pool() -> None:
    """One tiny predict per feature: an OpenMP pool would make each wait for busy cores."""
    model = _ThreadRecorder()
    with threadpool_limits(limits=2):  # as on a machine with 2 cores, whatever this one has
        described = describe_model(model, None)
        assert max(pool["num_threads"] for pool in threadpool_info()) == 2  # and back after
    assert [f["nullable"] for f in described["features"]] == [True, True, True]
    assert model.probes == [1, 1, 1]


def test_register_refuses_a_flag_naming_an_unknown_feature(
    store: ModelStore, hgb_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--store", str(store.root), "models", "register", "hgb", str(hgb_artifact)]
    assert main([*args, "--nullable", "zzz"]) != 0
    assert "zzz" in capsys.readouterr().err


@pytest.fixture
def app(
    store: ModelStore,
    hgb_artifact: Path,
    imputer_artifact: Path,
    logistic_artifact: Path,
    make_app: Callable[..., Flask],
) -> Flask:
    register(store, "hgb", hgb_artifact)
    register(store, "churn", imputer_artifact)
    register(store, "logistic", logistic_artifact)
    return make_app(default_model="hgb")


ROWS = [[None, 0.5, -1.0], [1.0, None, 0.2], [0.3, -0.2, 0.1]]


def expected(artifact: Path, rows: list[list[Any]], columns: list[str] = NAMES) -> list[Any]:
    frame = pd.DataFrame(rows, columns=columns).astype({c: float for c in columns if c != "plan"})
    return joblib.load(artifact).predict(frame).tolist()


def test_v1_takes_null_for_a_nullable_feature(app: Flask, hgb_artifact: Path) -> None:
    client = app.test_client()
    objects = [dict(zip(NAMES, row)) for row in ROWS]
    for instances in (ROWS, objects):
        response = client.post("/v1/models/hgb/predict", json={"instances": instances})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["predictions"] == expected(hgb_artifact, ROWS)


def test_v1_takes_a_nan_token_for_a_nullable_feature(app: Flask, hgb_artifact: Path) -> None:
    body = '{"instances": [[NaN, 0.5, -1.0]]}'
    response = app.test_client().post(
        "/v1/models/hgb/predict", data=body, content_type="application/json"
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == expected(hgb_artifact, [[math.nan, 0.5, -1.0]])


def test_imputer_pipeline_takes_income_null(app: Flask, imputer_artifact: Path) -> None:
    rows = [[None, 40.0, "pro"], [62.0, None, "basic"]]
    objects = [{"income": r[0], "age": r[1], "plan": r[2]} for r in rows]
    response = app.test_client().post("/v1/models/churn/predict", json={"instances": objects})
    assert response.status_code == 200, response.get_json()
    want = expected(imputer_artifact, rows, ["income", "age", "plan"])
    assert response.get_json()["predictions"] == want


def test_a_feature_that_is_not_nullable_keeps_the_clear_422(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/v1/models/logistic/predict", json={"instances": [[None, 1.0, 2.0]]})
    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["feature"] == "a"
    response = client.post(
        "/v1/models/churn/predict",
        json={"instances": [{"income": 1.0, "age": 2.0, "plan": None}]},
    )
    assert response.status_code == 422


def test_metadata_shows_which_features_are_nullable(app: Flask) -> None:
    client = app.test_client()
    v1 = client.get("/v1/models/churn").get_json()["features"]
    assert [(f["name"], f["nullable"]) for f in v1] == [
        ("income", True),
        ("age", True),
        ("plan", False),
    ]
    v2 = client.get("/v2/models/hgb").get_json()["inputs"][0]["parameters"]["features"]
    assert all(f["nullable"] for f in v2)


def test_v2_takes_null_and_nan_in_an_fp64_tensor(app: Flask, hgb_artifact: Path) -> None:
    client = app.test_client()
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [3, 3], "data": ROWS}
    response = client.post("/v2/models/hgb/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == expected(hgb_artifact, ROWS)
    body = json.dumps({"inputs": [{**tensor, "data": ROWS}]}).replace("null", "NaN")
    response = client.post("/v2/models/hgb/infer", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == expected(hgb_artifact, ROWS)


def test_v2_null_for_a_feature_that_is_not_nullable_is_400(app: Flask) -> None:
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [1, 3], "data": [None, 1.0, 2.0]}
    response = app.test_client().post("/v2/models/logistic/infer", json={"inputs": [tensor]})
    assert response.status_code == 400
    assert "'a'" in response.get_json()["error"]


def test_mlflow_takes_null_records_and_empty_csv_fields(app: Flask, hgb_artifact: Path) -> None:
    client = app.test_client()
    records = [dict(zip(NAMES, row)) for row in ROWS]
    response = client.post("/invocations", json={"dataframe_records": records})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == expected(hgb_artifact, ROWS)
    csv = pd.DataFrame(ROWS, columns=NAMES).to_csv(index=False)
    response = client.post("/invocations", data=csv, content_type="text/csv")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == expected(hgb_artifact, ROWS)


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_batch_scores_rows_with_missing_values(
    store: ModelStore, hgb_artifact: Path, tmp_path: Path, suffix: str
) -> None:
    register(store, "hgb", hgb_artifact)
    frame, _ = _numbers(50)
    data = tmp_path / f"in.{suffix}"
    if suffix == "csv":
        frame.to_csv(data, index=False)
    elif suffix == "parquet":
        frame.to_parquet(data, index=False)
    else:
        lines = [
            json.dumps({k: (None if v != v else v) for k, v in r.items()})
            for r in frame.to_dict("records")
        ]
        data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--store",
            str(store.root),
            "batch",
            "hgb",
            str(data),
            "-o",
            str(out),
        ],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()
    scored = pd.read_csv(io.BytesIO(out.read_bytes()))
    assert scored["prediction"].tolist() == joblib.load(hgb_artifact).predict(frame).tolist()
    assert frame["a"].isna().any()


def test_monitoring_counts_nulls_as_missing_not_as_errors(
    store: ModelStore, imputer_artifact: Path, tmp_path: Path, make_app: Callable[..., Flask]
) -> None:
    rows = pd.DataFrame({"income": [50.0, np.nan, 61.0], "age": [30.0, 40.0, np.nan]})
    reference = tmp_path / "train.csv"
    rows.assign(plan=["pro", "basic", "pro"]).to_csv(reference, index=False)
    register(store, "churn", imputer_artifact, "--reference-data", str(reference))
    client = make_app().test_client()
    objects = [{"income": None, "age": 33.0, "plan": "pro"}] * 4
    response = client.post("/v1/models/churn/predict", json={"instances": objects})
    assert response.status_code == 200, response.get_json()
    metadata = store.read_metadata("churn", 1)
    assert metadata["reference_stats"]["features"]["income"]["missing_rate"] > 0
    assert client.get("/v1/models/churn/monitoring").status_code == 200
