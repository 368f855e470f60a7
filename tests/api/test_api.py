"""The native /v1 API through Flask's test client, over a real store with real artifacts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.neural_network import MLPClassifier

from serving.api.state import get_state
from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW
from tests.telemetry.test_prometheus import scrape, value

IRIS_NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def test_predict_rows_returns_labels_version_and_request_id(client: FlaskClient) -> None:
    response = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["predictions"] == ["setosa"]
    assert body["model"] == "iris" and body["version"] == 1
    assert response.headers["X-Model-Version"] == "1"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "probabilities" not in body


def test_predict_objects_keyed_by_feature_name_in_any_order(client: FlaskClient) -> None:
    row = dict(reversed(list(zip(IRIS_NAMES, IRIS_ROW))))
    response = client.post("/v1/models/iris/predict", json={"instances": [row, row]})
    assert response.status_code == 200
    assert response.get_json()["predictions"] == ["setosa", "setosa"]


def test_return_proba_gives_probabilities_and_classes(client: FlaskClient) -> None:
    response = client.post(
        "/v1/models/iris/predict", json={"instances": [IRIS_ROW], "return_proba": True}
    )
    body = response.get_json()
    assert body["classes"] == ["setosa", "versicolor", "virginica"]
    assert len(body["probabilities"][0]) == 3
    assert abs(sum(body["probabilities"][0]) - 1.0) < 1e-9


def test_regressor_returns_numbers(client: FlaskClient) -> None:
    row = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.0, 0.02, -0.02]
    response = client.post("/v1/models/diabetes/predict", json={"instances": [row]})
    assert response.status_code == 200
    assert isinstance(response.get_json()["predictions"][0], float)


def test_request_id_is_echoed_when_given(client: FlaskClient) -> None:
    response = client.post(
        "/v1/models/iris/predict", json={"instances": [IRIS_ROW]}, headers={"X-Request-ID": "abc-1"}
    )
    assert response.headers["X-Request-ID"] == "abc-1"
    assert response.get_json()["request_id"] == "abc-1"


def test_request_id_with_unsafe_characters_is_replaced(client: FlaskClient) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": "bad id\twith space"})
    assert response.headers["X-Request-ID"] != "bad id\twith space"
    assert len(response.headers["X-Request-ID"]) == 32


def test_pinned_version_serves_that_version(
    served: ModelStore, iris_artifact_v2: Path, make_app: Callable[..., Flask]
) -> None:
    served.register("iris", iris_artifact_v2, actor="test")
    client = make_app().test_client()
    pinned = client.post("/v1/models/iris/versions/2/predict", json={"instances": [IRIS_ROW]})
    default = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
    assert pinned.status_code == 200 and pinned.headers["X-Model-Version"] == "2"
    assert default.headers["X-Model-Version"] == "1"


def test_pinned_version_is_unavailable_when_pinned_cache_is_off(
    served: ModelStore, iris_artifact_v2: Path, make_app: Callable[..., Flask]
) -> None:
    served.register("iris", iris_artifact_v2, actor="test")
    client = make_app(pinned_cache_size=0).test_client()
    response = client.post("/v1/models/iris/versions/2/predict", json={"instances": [IRIS_ROW]})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "model_unavailable"


def test_mixed_pipeline_takes_strings_for_categories(
    store: ModelStore, mixed_artifact: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, activate=True, actor="test")
    client = make_app().test_client()
    rows = [
        {"age": 30, "income": 80000.0, "city": "paris", "plan": "pro"},
        {"age": 50, "income": 20000.0, "city": "nice", "plan": "free"},
    ]
    response = client.post(
        "/v1/models/churn/predict", json={"instances": rows, "return_proba": True}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == ["churn", "stay"]
    as_lists = client.post(
        "/v1/models/churn/predict", json={"instances": [[30, 80000.0, "lyon", "pro"]]}
    )
    assert as_lists.status_code == 200


@pytest.mark.parametrize(
    ("row", "feature", "fragment"),
    [
        ({"age": "thirty", "income": 1.0, "city": "paris", "plan": "pro"}, "age", "number"),
        ({"age": 30, "income": 1.0, "city": 7, "plan": "pro"}, "city", "string"),
        ({"age": 30, "income": 1.0, "city": "paris", "plan": True}, "plan", "string"),
        ({"age": None, "income": 1.0, "city": "paris", "plan": "pro"}, "age", "null"),
    ],
    ids=["string-for-number", "number-for-category", "bool-for-category", "null-number"],
)
def test_mixed_pipeline_refuses_wrong_types_with_the_feature(
    store: ModelStore,
    mixed_artifact: tuple[Path, Path],
    make_app: Callable[..., Flask],
    row: dict[str, object],
    feature: str,
    fragment: str,
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, activate=True, actor="test")
    response = make_app().test_client().post("/v1/models/churn/predict", json={"instances": [row]})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["details"]["feature"] == feature and fragment in error["message"]


def test_mixed_pipeline_unknown_category_is_422_not_500(
    store: ModelStore, mixed_artifact: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, activate=True, actor="test")
    row = {"age": 30, "income": 1.0, "city": "berlin", "plan": "pro"}
    response = make_app().test_client().post("/v1/models/churn/predict", json={"instances": [row]})
    assert response.status_code == 422
    assert "berlin" in response.get_json()["error"]["message"]


def test_mixed_pipeline_kinds_found_without_reference_data(
    store: ModelStore, mixed_artifact: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    store.register("churn", mixed_artifact[0], activate=True, actor="test")
    client = make_app().test_client()
    features = client.get("/v1/models/churn").get_json()["features"]
    assert [f["kind"] for f in features] == ["numeric", "numeric", "categorical", "categorical"]


def test_wide_pipeline_with_300_features_serves_a_full_batch(
    store: ModelStore, wide_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("wide", wide_artifact, activate=True, actor="test")
    client = make_app(max_instances=10_000, max_body_bytes=64 * 1024 * 1024).test_client()
    rows = [[float((i * j) % 7 - 3) for j in range(300)] for i in range(2_000)]
    response = client.post("/v1/models/wide/predict", json={"instances": rows})
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 2_000


def test_unnamed_model_takes_rows_and_refuses_objects(
    store: ModelStore, unnamed_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("plain", unnamed_artifact, activate=True, actor="test")
    client = make_app().test_client()
    ok = client.post(
        "/v1/models/plain/predict", json={"instances": [IRIS_ROW], "return_proba": True}
    )
    assert ok.status_code == 200 and ok.get_json()["predictions"] == [0]
    refused = client.post("/v1/models/plain/predict", json={"instances": [{"a": 1.0}]})
    assert (
        refused.status_code == 422 and "no feature names" in refused.get_json()["error"]["message"]
    )


def test_list_and_show_models(client: FlaskClient) -> None:
    listed = client.get("/v1/models").get_json()["models"]
    assert [m["name"] for m in listed] == ["diabetes", "iris"]
    shown = client.get("/v1/models/iris").get_json()
    assert shown["aliases"] == {"production": 1} and shown["serving"] == {"production": 1}
    assert shown["task"] == "classifier" and len(shown["features"]) == 4
    version = client.get("/v1/models/iris/versions/1").get_json()
    assert version["sha256"] and version["feature_names"] == IRIS_NAMES


def test_health_live_and_ready(client: FlaskClient) -> None:
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").get_json() == {"status": "ready"}


def test_ready_is_503_while_a_deployed_model_has_no_loadable_version(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    (served.version_dir("iris", 1) / "model.joblib").write_bytes(b"garbage")
    client = make_app().test_client()
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert "sha256" in response.get_json()["waiting"]["iris:production"]
    predict = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
    assert predict.status_code == 503 and predict.get_json()["error"]["code"] == "model_unavailable"


def test_return_proba_of_a_binary_mlp_is_served(
    store: ModelStore, tmp_path: Path, make_app: Callable[..., Flask]
) -> None:
    # MLPClassifier.predict_proba of two classes is a transposed (Fortran-order) array.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    model = MLPClassifier((4,), max_iter=2000, random_state=0).fit(x, x[:, 0] > 0)
    joblib.dump(model, tmp_path / "mlp.joblib")
    store.register("mlp", tmp_path / "mlp.joblib", activate=True, actor="test")
    response = (
        make_app()
        .test_client()
        .post("/v1/models/mlp/predict", json={"instances": x[:2].tolist(), "return_proba": True})
    )
    assert response.status_code == 200, response.get_json()
    assert np.allclose(np.sum(response.get_json()["probabilities"], axis=1), 1.0)


def test_ready_names_an_alias_served_by_an_older_version_and_the_metric_says_which(
    served: ModelStore, make_app: Callable[..., Flask], iris_artifact: Path
) -> None:
    old_worker = make_app().test_client()
    assert old_worker.get("/health/ready").get_json() == {"status": "ready"}
    served.register("iris", iris_artifact, actor="test")
    (served.version_dir("iris", 2) / "model.joblib").write_bytes(b"garbage")
    served.promote("iris", 2, actor="test")
    get_state(old_worker.application).loader.refresh()  # the running worker's next poll
    fresh_worker = make_app().test_client()  # a worker started after the failed promote
    for client in (old_worker, fresh_worker):
        response = client.get("/health/ready")
        assert response.status_code == 200  # it answers: the last good version
        why = response.get_json()["fallback"]["iris:production"]
        assert "version 2 failed to load" in why and "still serving version 1" in why, why
        labels = {"model": "iris", "alias": "production", "pid": str(os.getpid())}
        assert value(scrape(client), "serving_model_version", **labels) == 1
