"""`serving optimize NAME VERSION --onnx`: skl2onnx conversion, the parity gate, ONNX serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from flask import Flask
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris

from serving.cli.main import main
from serving.compile import onnx as onnx_compile
from serving.compile.parity import ABS_TOL, REL_TOL
from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW

ROWS = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 2.8, 4.4, 1.4], [6.3, 2.7, 4.9, 1.6]]


class Threshold(ClassifierMixin, BaseEstimator):
    """A custom estimator skl2onnx has no converter for."""

    def fit(self, x: Any, y: Any) -> Threshold:
        self.classes_ = np.unique(y)
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def predict(self, x: Any) -> np.ndarray:
        return self.classes_[(np.asarray(x)[:, 0] > 5.5).astype(int)]


@pytest.fixture(scope="session")
def custom_artifact(artifacts_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    path = artifacts_dir / "custom.joblib"
    joblib.dump(Threshold().fit(x, y), path)
    return path


def _optimize(store: ModelStore, name: str, version: int, *flags: str) -> int:
    return main(
        ["--store", str(store.root), "--actor", "test", "optimize", name, str(version), *flags]
    )


def _close(a: Any, b: Any) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(np.abs(a - b) <= ABS_TOL + REL_TOL * np.abs(b)))


@pytest.mark.parametrize("which", ["linear", "forest"])
def test_optimize_registers_an_onnx_version_that_answers_like_the_original(
    store: ModelStore,
    iris_artifact: Path,
    forest_artifact: Path,
    iris_reference: Path,
    make_app: Callable[..., Flask],
    capsys: pytest.CaptureFixture[str],
    which: str,
) -> None:
    artifact = iris_artifact if which == "linear" else forest_artifact
    store.register("iris", artifact, iris_reference, activate=True, actor="test")
    assert _optimize(store, "iris", 1, "--onnx") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2"
    source, meta = store.read_metadata("iris", 1), store.read_metadata("iris", 2)
    assert meta["format"] == "onnx" and meta["artifact"] == "model.onnx"
    assert meta["source_version"] == 1 and meta["onnxruntime_version"]
    assert (store.version_dir("iris", 2) / "model.onnx").is_file()
    for key in ("task", "classes", "feature_names", "features", "n_features", "sample_input"):
        assert meta[key] == source[key], key
    assert meta["reference_stats"] == source["reference_stats"]
    parity = meta["parity"]
    assert parity["ok"] and parity["label_mismatches"] == 0 and parity["rows"] >= 2000
    assert parity["proba_max_abs_diff"] <= ABS_TOL
    assert store.history("iris")[-1]["action"] == "register"
    assert store.read_deployment("iris")["aliases"] == {"production": 1}  # not promoted

    client = make_app().test_client()
    answers = {}
    for version in (1, 2):
        response = client.post(
            f"/v1/models/iris/versions/{version}/predict",
            json={"instances": ROWS, "return_proba": True},
        )
        assert response.status_code == 200, response.get_json()
        answers[version] = response.get_json()
    assert answers[2]["predictions"] == answers[1]["predictions"]
    assert answers[2]["classes"] == answers[1]["classes"] == ["setosa", "versicolor", "virginica"]
    assert _close(answers[2]["probabilities"], answers[1]["probabilities"])

    v2 = {}
    for version in (1, 2):
        body = {"inputs": [{"name": "input-0", "shape": [4, 4], "datatype": "FP64", "data": ROWS}]}
        response = client.post(f"/v2/models/iris/versions/{version}/infer", json=body)
        assert response.status_code == 200, response.get_json()
        v2[version] = response.get_json()
    assert v2[2]["model_version"] == "2"
    assert [o["name"] for o in v2[2]["outputs"]] == [o["name"] for o in v2[1]["outputs"]]
    for ours, theirs in zip(v2[2]["outputs"], v2[1]["outputs"]):
        if ours["datatype"] in ("FP32", "FP64"):
            assert _close(ours["data"], theirs["data"])
        else:
            assert ours["data"] == theirs["data"]

    assert main(["--store", str(store.root), "models", "promote", "iris", "2"]) == 0
    mlflow = make_app(default_model="iris").test_client()
    response = mlflow.post("/invocations", json={"inputs": ROWS})
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Model-Version"] == "2"
    assert response.get_json()["predictions"] == answers[1]["predictions"]


def test_a_regressor_compiles_with_values_within_tolerance(
    store: ModelStore, regressor_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("diabetes", regressor_artifact, activate=True, actor="test")
    assert _optimize(store, "diabetes", 1, "--onnx") == 0
    assert store.read_metadata("diabetes", 2)["parity"]["output_max_abs_diff"] <= ABS_TOL + 1e-3
    client = make_app().test_client()
    row = [0.01] * 10
    answers = [
        client.post(f"/v1/models/diabetes/versions/{v}/predict", json={"instances": [row]})
        for v in (1, 2)
    ]
    assert all(a.status_code == 200 for a in answers)
    assert _close(answers[1].get_json()["predictions"], answers[0].get_json()["predictions"])


def test_a_model_with_categorical_features_is_refused_and_nothing_registered(
    store: ModelStore, mixed_artifact: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, actor="test")
    assert _optimize(store, "churn", 1, "--onnx") == 1
    err = capsys.readouterr().err
    assert "categorical features" in err and "city" in err and len(err.strip().splitlines()) == 1
    assert store.versions("churn") == [1]


def test_an_estimator_skl2onnx_cannot_convert_gets_a_clear_error(
    store: ModelStore, custom_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.register("custom", custom_artifact, actor="test")
    assert _optimize(store, "custom", 1, "--onnx") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: skl2onnx cannot convert Threshold") and "\n" not in err
    assert store.versions("custom") == [1]


def test_a_parity_failure_refuses_to_register_and_prints_the_report(
    store: ModelStore,
    iris_artifact: Path,
    iris_reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.register("iris", iris_artifact, iris_reference, actor="test")
    real = onnx_compile.OnnxModel.predict_proba
    monkeypatch.setattr(
        onnx_compile.OnnxModel, "predict_proba", lambda self, x: real(self, x) + 0.01
    )
    assert _optimize(store, "iris", 1, "--onnx") == 1
    err = capsys.readouterr().err
    assert "does not match the original; not registered" in err
    report = json.loads(err[err.index("{") :])
    assert report["ok"] is False and report["proba_out_of_tolerance"] > 0
    assert store.versions("iris") == [1]


def test_a_corrupted_onnx_artifact_is_refused_by_the_loader(
    store: ModelStore, iris_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="test")
    assert _optimize(store, "iris", 1, "--onnx") == 0
    path = store.version_dir("iris", 2) / "model.onnx"
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    client = make_app().test_client()
    response = client.post("/v1/models/iris/versions/2/predict", json={"instances": ROWS})
    assert response.status_code == 503
    assert "sha256 mismatch" in json.dumps(response.get_json())


def test_optimize_without_a_method_says_which_flags_exist(
    store: ModelStore, iris_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.register("iris", iris_artifact, actor="test")
    assert _optimize(store, "iris", 1) == 1
    err = capsys.readouterr().err
    assert "--onnx" in err and "--quantize" in err
    assert store.versions("iris") == [1]


def test_an_onnx_version_cannot_be_optimized_again(
    store: ModelStore, iris_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.register("iris", iris_artifact, actor="test")
    assert _optimize(store, "iris", 1, "--onnx") == 0
    assert _optimize(store, "iris", 2, "--onnx") == 1
    assert "already an ONNX version" in capsys.readouterr().err


def test_a_repaired_onnx_artifact_is_loaded_again(
    store: ModelStore, iris_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    """The loader remembers a failure until the files its metadata names change."""
    store.register("iris", iris_artifact, activate=True, actor="test")
    assert _optimize(store, "iris", 1, "--onnx") == 0
    path = store.version_dir("iris", 2) / "model.onnx"
    good = path.read_bytes()
    path.write_bytes(good[:-8] + b"corrupt!")
    client = make_app().test_client()
    url = "/v1/models/iris/versions/2/predict"
    assert client.post(url, json={"instances": ROWS}).status_code == 503
    assert client.post(url, json={"instances": ROWS}).status_code == 503  # remembered
    path.write_bytes(good)  # repaired: a new inode, mtime and size
    response = client.post(url, json={"instances": ROWS})
    assert response.status_code == 200, response.get_json()
    assert client.get("/v1/models/iris").get_json()["versions"] == [1, 2]
