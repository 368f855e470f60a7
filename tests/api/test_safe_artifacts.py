"""SERVING_ALLOW_PICKLE=false in a worker: joblib versions stay in the store but are refused
(readiness and `GET /v1/models/<name>` say why); skops and ONNX versions keep serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.cli.main import main
from serving.store.artifact_policy import ArtifactPolicy
from serving.store.model_store import ModelStore
from tests.conftest import FOREST_TYPES, IRIS_ROW

REFUSED = "pickle refused: SERVING_ALLOW_PICKLE=false"


@pytest.fixture
def mixed_store(served: ModelStore, forest_skops: Path) -> ModelStore:
    """iris: v1 joblib, v2 its ONNX compilation in production; diabetes: joblib only;
    forest: skops only."""
    assert main(["--store", str(served.root), "optimize", "iris", "1", "--onnx"]) == 0
    served.promote("iris", 2, actor="test")
    policy = ArtifactPolicy(trusted_types=frozenset({FOREST_TYPES}))
    served.register("forest", forest_skops, activate=True, actor="test", policy=policy)
    return served


@pytest.fixture
def no_pickle(mixed_store: ModelStore, make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(allow_pickle=False).test_client()


def test_readiness_names_the_pickle_refusal_of_a_joblib_only_model(no_pickle: FlaskClient) -> None:
    response = no_pickle.get("/health/ready")
    assert response.status_code == 503
    waiting = response.get_json()["waiting"]
    assert list(waiting) == ["diabetes:production"]
    assert REFUSED in waiting["diabetes:production"]


def test_model_detail_shows_the_refusal_as_a_problem(no_pickle: FlaskClient) -> None:
    detail = no_pickle.get("/v1/models/diabetes").get_json()
    assert detail["serving"] == {}
    assert REFUSED in detail["problems"]["production"]
    predict = no_pickle.post("/v1/models/diabetes/predict", json={"instances": [[0.0] * 10]})
    assert predict.status_code == 503


@pytest.mark.parametrize(
    ("model", "version", "runtime"), [("forest", "1", "sklearn"), ("iris", "2", "onnxruntime")]
)
def test_skops_and_onnx_versions_serve_without_pickle(
    no_pickle: FlaskClient, model: str, version: str, runtime: str
) -> None:
    response = no_pickle.post(f"/v1/models/{model}/predict", json={"instances": [IRIS_ROW]})
    assert response.status_code == 200, response.get_json()
    assert response.headers["X-Model-Version"] == version
    assert response.get_json()["predictions"] == ["setosa"]
    assert no_pickle.get(f"/v1/models/{model}").get_json()["runtime"] == runtime


def test_a_pinned_joblib_version_is_refused_with_the_reason(no_pickle: FlaskClient) -> None:
    response = no_pickle.post("/v1/models/iris/versions/1/predict", json={"instances": [IRIS_ROW]})
    assert response.status_code == 503
    assert REFUSED in response.get_json()["error"]["message"]


def test_the_same_store_serves_joblib_when_pickle_is_allowed(
    mixed_store: ModelStore, make_app: Callable[..., Flask]
) -> None:
    assert make_app().test_client().get("/health/ready").status_code == 200
