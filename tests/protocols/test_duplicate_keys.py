"""A key given twice in one JSON object is refused on every front door (never last-one-wins)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.store.model_store import ModelStore

GOOD = "[[5.1, 3.5, 1.4, 0.2]]"
CASES = {
    "v1 envelope": ("/v1/models/iris/predict", f'{{"instances": "bad", "instances": {GOOD}}}'),
    "v1 feature": (
        "/v1/models/iris/predict",
        '{"instances": [{"sepal length (cm)": 1, "sepal length (cm)": 5.1, '
        '"sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}]}',
    ),
    "v2": (
        "/v2/models/iris/infer",
        '{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "datatype": "FP32", '
        '"data": [5.1, 3.5, 1.4, 0.2]}]}',
    ),
    "mlflow": ("/invocations", f'{{"instances": {GOOD}, "instances": {GOOD}}}'),
}


@pytest.fixture
def client(served: ModelStore, make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(default_model="iris").test_client()


@pytest.mark.parametrize(("path", "body"), CASES.values(), ids=CASES.keys())
def test_a_repeated_key_is_a_400_naming_it(client: FlaskClient, path: str, body: str) -> None:
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "appears twice" in response.get_data(as_text=True)


@pytest.mark.parametrize(("path", "body"), CASES.values(), ids=CASES.keys())
def test_the_same_body_without_the_repeat_is_answered(
    client: FlaskClient, path: str, body: str
) -> None:
    fixed = {
        "v1 envelope": f'{{"instances": {GOOD}}}',
        "v1 feature": '{"instances": [{"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, '
        '"petal length (cm)": 1.4, "petal width (cm)": 0.2}]}',
        "v2": '{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", '
        '"data": [5.1, 3.5, 1.4, 0.2]}]}',
        "mlflow": f'{{"instances": {GOOD}}}',
    }[next(k for k, v in CASES.items() if v == (path, body))]
    response = client.post(path, data=fixed, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
