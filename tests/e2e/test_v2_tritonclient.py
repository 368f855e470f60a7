"""The real Triton HTTP client (`tritonclient[http]`) against a real gunicorn server's /v2."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as tritonclient_http
from tritonclient.utils import InferenceServerException

from serving.store.model_store import ModelStore
from tests.e2e.conftest import GunicornServer, server_env

pytestmark = pytest.mark.e2e

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def _get_json(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def server(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    mixed_artifact: tuple[Path, Path],
) -> GunicornServer:
    """iris v1 and diabetes v1 in production (`serving demo`), iris v2 and v3 stored only;
    churn (numbers and categories: one tensor per feature) in production."""
    store = copy_store()
    ModelStore(store).register("churn", *mixed_artifact, activate=True, actor="test")
    env = server_env(store, statsd_port=9, workers=1, extra={"SERVING_STATSD_HOST": ""})
    return start_server(env)


@pytest.fixture
def triton(server: GunicornServer) -> Iterator[Any]:
    client = tritonclient_http.InferenceServerClient(
        f"127.0.0.1:{server.port}", network_timeout=10.0
    )
    try:
        yield client
    finally:
        client.close()


def _v1(server: GunicornServer, name: str = "iris", rows: list[list[float]] = ROWS) -> dict:
    body = {"instances": rows, "return_proba": name == "iris"}
    return _get_json(server.port, f"/v1/models/{name}/predict", body)[1]


def _input(rows: Any, datatype: str, binary: bool) -> Any:
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = tritonclient_http.InferInput("input-0", list(array.shape), datatype)
    return tensor.set_data_from_numpy(array, binary_data=binary)


def _labels(array: np.ndarray) -> list[str]:
    """BYTES outputs come back as bytes (binary) or str (JSON)."""
    return [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]


# -- tests -------------------------------------------------------------------------------------


def test_server_health_and_metadata(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "serving" and "binary_tensor_data" in metadata["extensions"]


def test_model_readiness_and_metadata(triton: Any) -> None:
    assert triton.is_model_ready("iris")
    assert triton.is_model_ready("iris", "2")
    assert not triton.is_model_ready("nope")
    metadata = triton.get_model_metadata("iris")
    assert metadata["versions"] == ["1", "2", "3"] and metadata["platform"] == "sklearn"
    (tensor,) = metadata["inputs"]
    assert {k: tensor[k] for k in ("name", "datatype", "shape")} == {
        "name": "input-0",
        "datatype": "FP64",
        "shape": [-1, 4],
    }
    features = tensor["parameters"]["features"]  # what each column is, nullable or not
    assert [f["nullable"] for f in features] == [False] * 4
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba", "scores"]
    pinned = triton.get_model_metadata("diabetes", "1")
    assert pinned["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_infer_labels(
    server: GunicornServer, triton: Any, datatype: str, binary_input: bool, binary_output: bool
) -> None:
    outputs = [tritonclient_http.InferRequestedOutput("predict", binary_data=binary_output)]
    result = triton.infer(
        "iris", [_input(ROWS, datatype, binary_input)], outputs=outputs, request_id="r1"
    )
    assert _labels(result.as_numpy("predict")) == _v1(server)["predictions"]
    response = result.get_response()
    assert response["id"] == "r1" and response["model_version"] == "1"


def test_infer_without_requested_outputs_returns_binary_predict(
    server: GunicornServer, triton: Any
) -> None:
    result = triton.infer("iris", [_input(ROWS, "FP64", True)])
    assert result.get_output("predict")["parameters"]["binary_data_size"] > 0
    assert _labels(result.as_numpy("predict")) == _v1(server)["predictions"]


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_predict_proba_output(server: GunicornServer, triton: Any, binary_output: bool) -> None:
    outputs = [
        tritonclient_http.InferRequestedOutput("predict_proba", binary_data=binary_output),
        tritonclient_http.InferRequestedOutput("predict", binary_data=binary_output),
    ]
    result = triton.infer("iris", [_input(ROWS, "FP64", True)], outputs=outputs)
    probabilities = result.as_numpy("predict_proba")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float64
    assert np.allclose(probabilities, _v1(server)["probabilities"], atol=1e-6)


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_scores_output_is_the_decision_function(
    server: GunicornServer, triton: Any, binary_output: bool
) -> None:
    outputs = [tritonclient_http.InferRequestedOutput("scores", binary_data=binary_output)]
    result = triton.infer("iris", [_input(ROWS, "FP64", True)], outputs=outputs)
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 3) and scores.dtype == np.float64
    body = {"instances": ROWS, "return_scores": True}
    want = _get_json(server.port, "/v1/models/iris/predict", body)[1]["scores"]
    assert np.allclose(scores, want, atol=1e-12)


@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
def test_one_tensor_per_feature_for_a_model_with_categories(
    triton: Any, mixed_artifact: tuple[Path, Path], binary_input: bool
) -> None:
    """What the metadata lists, sent as Triton clients send it: BYTES from np.object_ arrays."""
    frame = pd.read_csv(mixed_artifact[1]).head(5)
    metadata = triton.get_model_metadata("churn")
    inputs = []
    for spec in metadata["inputs"]:
        column = frame[spec["name"]].to_numpy()
        array = column.astype(object if spec["datatype"] == "BYTES" else np.float64)
        tensor = tritonclient_http.InferInput(spec["name"], [len(frame), 1], spec["datatype"])
        inputs.append(tensor.set_data_from_numpy(array.reshape(-1, 1), binary_data=binary_input))
    result = triton.infer(
        "churn", inputs, outputs=[tritonclient_http.InferRequestedOutput("predict")]
    )
    want = joblib.load(mixed_artifact[0]).predict(frame).tolist()
    assert _labels(result.as_numpy("predict")) == want


def test_regressor_predictions(server: GunicornServer, triton: Any) -> None:
    rows = [[0.01 * i for i in range(10)], [0.0] * 10]
    result = triton.infer("diabetes", [_input(rows, "FP64", True)])
    predictions = result.as_numpy("predict")
    assert predictions.dtype == np.float64
    assert predictions.tolist() == pytest.approx(_v1(server, "diabetes", rows)["predictions"])


def test_pinned_and_unpinned_versions(triton: Any) -> None:
    tensor = _input(ROWS, "FP32", True)
    pinned = triton.infer("iris", [tensor], model_version="2")
    assert pinned.get_response()["model_version"] == "2"
    assert triton.infer("iris", [tensor]).get_response()["model_version"] == "1"


def test_repository_index(triton: Any) -> None:
    index = triton.get_model_repository_index()
    states = {(m["name"], m["version"]): m["state"] for m in index}
    assert states == {
        ("churn", "1"): "READY",
        ("diabetes", "1"): "READY",
        ("iris", "1"): "READY",
        ("iris", "2"): "UNAVAILABLE",
        ("iris", "3"): "UNAVAILABLE",
    }


def test_unknown_model_raises_a_readable_exception(triton: Any) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("nope", [_input(ROWS, "FP64", True)])
    assert raised.value.status() == "404"
    assert "model 'nope' is not deployed" in raised.value.message()


@pytest.mark.parametrize(
    ("model", "rows", "outputs", "text"),
    [
        ("iris", [[1.0, 2.0, 3.0]], [], "expected shape [N, 4]"),
        ("diabetes", [[0.0] * 10], ["predict_proba"], "no output 'predict_proba'"),
    ],
    ids=["wrong-shape", "proba-of-a-regressor"],
)
def test_bad_requests_raise_readable_exceptions(
    triton: Any, model: str, rows: list, outputs: list[str], text: str
) -> None:
    requested = [tritonclient_http.InferRequestedOutput(name) for name in outputs]
    with pytest.raises(InferenceServerException) as raised:
        triton.infer(model, [_input(rows, "FP64", True)], outputs=requested or None)
    assert raised.value.status() == "400"
    assert text in raised.value.message()
