"""The Open Inference Protocol (/v2) through Flask's test client: JSON and binary tensors."""

from __future__ import annotations

import json
import logging
import struct
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW

INFER = "/v2/models/iris/infer"
HEADER = "Inference-Header-Content-Length"
ROWS = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]
REPO = Path(__file__).resolve().parents[2]


def _input(rows: Any, datatype: str = "FP64", flat: bool = False) -> dict:
    array = np.asarray(rows)
    data = array.ravel().tolist() if flat else array.tolist()
    return {"name": "input-0", "shape": list(array.shape), "datatype": datatype, "data": data}


def _request(rows: Any = ROWS, **fields: Any) -> dict:
    return {"inputs": [_input(rows, fields.pop("datatype", "FP64"))], **fields}


def _post_binary(
    client: FlaskClient, header: dict, raw: bytes, path: str = INFER, **headers: str
) -> TestResponse:
    head = json.dumps(header).encode()
    return client.post(path, data=head + raw, headers={HEADER: str(len(head)), **headers})


def _binary_input(array: np.ndarray, datatype: str) -> tuple[dict, bytes]:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    tensor = {"name": "input-0", "shape": list(array.shape), "datatype": datatype}
    return {**tensor, "parameters": {"binary_data_size": len(raw)}}, raw


def _split_response(response: TestResponse) -> tuple[dict, dict[str, bytes]]:
    """The JSON header and each binary output's raw bytes, by output name."""
    length = int(response.headers[HEADER])
    header, raw = json.loads(response.data[:length]), response.data[length:]
    chunks, offset = {}, 0
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            chunks[output["name"]] = raw[offset : offset + size]
            offset += size
    assert offset == len(raw)
    return header, chunks


def _strings(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    return out


def _v1(client: FlaskClient, rows: list[list[float]], name: str = "iris") -> dict:
    body = {"instances": rows, "return_proba": name == "iris"}
    return client.post(f"/v1/models/{name}/predict", json=body).get_json()


# -- server and model metadata, health ---------------------------------------------------------


def test_server_metadata_names_the_binary_extension_and_the_package_version(
    client: FlaskClient,
) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert client.get("/v2").get_json() == {
        "name": "serving",
        "version": project["version"],
        "extensions": ["binary_tensor_data"],
    }


def test_health_live_and_ready(client: FlaskClient) -> None:
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_ready_is_503_with_an_error_while_a_deployed_model_cannot_load(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    (served.version_dir("iris", 1) / "model.joblib").write_bytes(b"garbage")
    client = make_app().test_client()
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert "iris:production" in response.get_json()["error"]
    assert client.get("/v2/models/iris/ready").status_code == 503
    assert client.get("/v2/models/diabetes/ready").get_json() == {"name": "diabetes", "ready": True}


IRIS_NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _numeric(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "numeric", "nullable": False}


def test_classifier_metadata_has_label_and_probability_outputs(client: FlaskClient) -> None:
    assert client.get("/v2/models/iris").get_json() == {
        "name": "iris",
        "versions": ["1"],
        "platform": "sklearn",
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": [-1, 4],
                "parameters": {"features": [_numeric(name) for name in IRIS_NAMES]},
            }
        ],
        "outputs": [
            {"name": "predict", "datatype": "BYTES", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
            {"name": "scores", "datatype": "FP64", "shape": [-1, 3]},  # decision_function
        ],
    }


def test_regressor_metadata_has_one_fp64_output(client: FlaskClient) -> None:
    body = client.get("/v2/models/diabetes/versions/1").get_json()
    assert [{k: v for k, v in i.items() if k != "parameters"} for i in body["inputs"]] == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, 10]}
    ]
    assert body["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


def test_integer_labels_are_int64(
    store: ModelStore, unnamed_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("digits", unnamed_artifact, activate=True, actor="test")
    client = make_app().test_client()
    outputs = client.get("/v2/models/digits").get_json()["outputs"]
    assert outputs[0] == {"name": "predict", "datatype": "INT64", "shape": [-1]}
    body = {"inputs": [_input([IRIS_ROW])], "outputs": [{"name": "predict"}]}
    answer = client.post("/v2/models/digits/infer", json=body).get_json()
    assert answer["outputs"][0] == {
        "name": "predict",
        "datatype": "INT64",
        "shape": [1],
        "data": [0],
    }


def test_a_pinned_version_serves_without_being_deployed(
    served: ModelStore, iris_artifact_v2: Path, make_app: Callable[..., Flask]
) -> None:
    served.register("iris", iris_artifact_v2, actor="test")
    client = make_app().test_client()
    assert client.get("/v2/models/iris").get_json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/iris/versions/2/ready").status_code == 200
    answer = client.post("/v2/models/iris/versions/2/infer", json=_request())
    assert answer.status_code == 200 and answer.get_json()["model_version"] == "2"
    assert answer.headers["X-Model-Version"] == "2"
    assert client.post(INFER, json=_request()).get_json()["model_version"] == "1"


def test_repository_index_lists_every_stored_version_and_filters_ready_ones(
    served: ModelStore, iris_artifact_v2: Path, make_app: Callable[..., Flask]
) -> None:
    served.register("iris", iris_artifact_v2, actor="test")
    client = make_app().test_client()
    entries = client.post("/v2/repository/index").get_json()
    assert {(e["name"], e["version"], e["state"]) for e in entries} == {
        ("diabetes", "1", "READY"),
        ("iris", "1", "READY"),
        ("iris", "2", "UNAVAILABLE"),
    }
    assert all(e["reason"] for e in entries if e["state"] == "UNAVAILABLE")
    ready = client.post("/v2/repository/index", json={"ready": True}).get_json()
    assert [(e["name"], e["version"]) for e in ready] == [("diabetes", "1"), ("iris", "1")]


# -- infer with JSON tensors -------------------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True], ids=["nested", "flat"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_infer_json_matches_v1(client: FlaskClient, datatype: str, flat: bool) -> None:
    expected = _v1(client, ROWS)
    body = {
        "inputs": [_input(ROWS, datatype, flat)],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    response = client.post(INFER, json=body)
    assert response.status_code == 200 and response.mimetype == "application/json"
    answer = response.get_json()
    assert answer["model_name"] == "iris" and answer["model_version"] == "1"
    predict, proba = answer["outputs"]
    assert predict == {
        "name": "predict",
        "datatype": "BYTES",
        "shape": [2],
        "data": expected["predictions"],
    }
    assert proba["datatype"] == "FP64" and proba["shape"] == [2, 3]
    assert np.allclose(np.reshape(proba["data"], (2, 3)), expected["probabilities"], atol=1e-6)


def test_infer_without_outputs_returns_predict_only(client: FlaskClient) -> None:
    answer = client.post(INFER, json=_request()).get_json()
    assert [o["name"] for o in answer["outputs"]] == ["predict"]
    assert "id" not in answer


def test_regressor_takes_integer_tensors(client: FlaskClient) -> None:
    rows = [[1, 0, 2, 1, 0, 0, 1, 0, 1, 2]] * 3
    expected = _v1(client, rows, "diabetes")["predictions"]
    body = {"inputs": [_input(rows, "INT64")]}
    predict = client.post("/v2/models/diabetes/infer", json=body).get_json()["outputs"][0]
    assert predict["datatype"] == "FP64" and predict["shape"] == [3]
    assert predict["data"] == pytest.approx(expected)


def test_id_is_echoed_and_unknown_parameters_are_ignored(client: FlaskClient) -> None:
    body = {
        "id": "req-42",
        "model_name": "iris",
        "parameters": {"priority": 1, "custom": {"a": [1]}, "flag": True},
        "inputs": [{**_input(ROWS), "parameters": {"content_type": "np", "x": False}}],
        "outputs": [{"name": "predict", "parameters": {"hint": "y"}}],
    }
    response = client.post(INFER, json=body)
    assert response.status_code == 200
    assert response.get_json()["id"] == "req-42"


def test_infer_is_logged_with_model_version_and_rows(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="serving.request"):
        client.post(INFER, json=_request())
    (record,) = [r for r in caplog.records if r.name == "serving.request"]
    assert (record.path, record.model, record.version, record.rows) == (INFER, "iris", 1, 2)


# -- the binary tensor extension ---------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_binary_input_with_json_output(client: FlaskClient, datatype: str) -> None:
    tensor, raw = _binary_input(np.array(ROWS, dtype=datatype.replace("FP", "float")), datatype)
    response = _post_binary(client, {"inputs": [tensor]}, raw)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert HEADER not in response.headers
    assert response.get_json()["outputs"][0]["data"] == _v1(client, ROWS)["predictions"]


def test_binary_input_with_an_octet_stream_content_type(client: FlaskClient) -> None:
    tensor, raw = _binary_input(np.array(ROWS), "FP64")
    response = _post_binary(
        client, {"inputs": [tensor]}, raw, **{"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200


def test_binary_outputs_for_labels_and_probabilities(client: FlaskClient) -> None:
    expected = _v1(client, ROWS)
    body = _request(
        id="b1",
        outputs=[
            {"name": "predict", "parameters": {"binary_data": True}},
            {"name": "predict_proba", "parameters": {"binary_data": True}},
        ],
    )
    response = client.post(INFER, json=body)
    assert response.status_code == 200 and response.mimetype == "application/octet-stream"
    header, chunks = _split_response(response)
    assert header["id"] == "b1"
    predict, proba = header["outputs"]
    assert (predict["datatype"], predict["shape"]) == ("BYTES", [2])
    assert _strings(chunks["predict"]) == expected["predictions"]
    assert (proba["datatype"], proba["shape"]) == ("FP64", [2, 3])
    probabilities = np.frombuffer(chunks["predict_proba"], dtype="<f8").reshape(2, 3)
    assert np.allclose(probabilities, expected["probabilities"], atol=1e-6)


def test_binary_data_output_applies_to_outputs_that_do_not_say(client: FlaskClient) -> None:
    tensor, raw = _binary_input(np.array(ROWS, dtype=np.float32), "FP32")
    header = {
        "inputs": [tensor],
        "parameters": {"binary_data_output": True},
        "outputs": [
            {"name": "predict"},
            {"name": "predict_proba", "parameters": {"binary_data": False}},
        ],
    }
    response = _post_binary(client, header, raw)
    head, chunks = _split_response(response)
    assert list(chunks) == ["predict"]
    assert len(head["outputs"][1]["data"]) == 6


def test_regressor_binary_output_is_fp64(client: FlaskClient) -> None:
    rows = np.zeros((2, 10))
    tensor, raw = _binary_input(rows, "FP64")
    header = {"inputs": [tensor], "parameters": {"binary_data_output": True}}
    head, chunks = _split_response(_post_binary(client, header, raw, "/v2/models/diabetes/infer"))
    expected = _v1(client, rows.tolist(), "diabetes")["predictions"]
    assert head["outputs"][0]["datatype"] == "FP64"
    assert np.frombuffer(chunks["predict"], dtype="<f8").tolist() == pytest.approx(expected)


# -- errors: always {"error": "..."} -----------------------------------------------------------


def _binary_case(shape: list[int], size: int, raw: bytes) -> dict:
    tensor = {
        "name": "x",
        "shape": shape,
        "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }
    return {"header": {"inputs": [tensor]}, "raw": raw}


ERROR_CASES = [
    # (request: JSON body, or {"header", "raw"} for a binary one; status; text in the error)
    (_request([[1.0, 2.0, 3.0]]), 400, "expected shape [N, 4]"),
    (_request([[1.0, 2.0, 3.0, 4.0]], datatype="BYTES"), 400, "BYTES data must hold only strings"),
    (_request([["a", "b", "c", "d"]], datatype="BYTES"), 400, "expected numbers, got dtype object"),
    (_request(datatype="FLOAT"), 400, "not supported"),
    ({"inputs": [{**_input(ROWS), "shape": [3, 4]}]}, 400, "does not fit shape [3, 4]"),
    ({"inputs": [{**_input(ROWS), "data": [[1, 2, 3, 4], [1, 2]]}]}, 400, "rectangular"),
    ({"inputs": [{**_input(ROWS), "data": [[1, 2, 3, True]] * 2}]}, 400, "only numbers"),
    ({"inputs": [{**_input(ROWS), "data": [["a", "b", "c", "d"]] * 2}]}, 400, "only numbers"),
    ({"inputs": [_input([[1, 2, 3, 300]], "INT8")]}, 400, "out of range for INT8"),
    ({"inputs": [_input([[1.5, 2, 3, 4]], "INT32")]}, 400, "only integers"),
    ({"inputs": [_input(ROWS), _input(ROWS)]}, 400, "exactly one input"),
    ({"inputs": [{**_input(ROWS), "shape": "2x4"}]}, 400, "inputs.0.shape: Not a valid list"),
    ({"inputs": [{**_input(ROWS), "data": None}]}, 400, "neither data nor"),
    ({"outputs": [{"name": "predict"}]}, 400, "inputs: Missing data"),
    (_request(outputs=[{"name": "labels"}]), 400, "no output 'labels'"),
    (_request(outputs=[{"name": "predict", "parameters": {"binary_data": 1}}]), 400, "true or"),
    (_request(outputs=[{"name": "predict", "parameters": {"classification": 2}}]), 400, "classif"),
    (_binary_case([2, 4], 16, b"\0" * 16), 400, "takes 32 bytes"),
    (_binary_case([2, 4], 32, b"\0" * 16), 400, "but 16 bytes follow"),
    (_binary_case([2, 4], 32, b"\0" * 40), 400, "but 40 bytes follow"),
    (_binary_case([2, 4], True, b"\0" * 32), 400, "binary_data_size is True"),
    (_binary_case([-2, 4], 32, b"\0" * 32), 400, "negative dimension"),
]
ERROR_IDS = [
    "too-few-features",
    "bytes-datatype",
    "bytes-for-numbers",
    "unknown-datatype",
    "data-does-not-fit-shape",
    "ragged-data",
    "boolean-in-data",
    "strings-in-data",
    "int8-out-of-range",
    "float-in-int-tensor",
    "two-inputs",
    "shape-not-a-list",
    "no-data",
    "no-inputs",
    "unknown-output",
    "binary-data-not-a-bool",
    "classification-extension",
    "binary-size-does-not-match-shape",
    "binary-body-too-short",
    "binary-body-too-long",
    "binary-size-not-an-int",
    "negative-dimension",
]


@pytest.mark.parametrize(("body", "status", "text"), ERROR_CASES, ids=ERROR_IDS)
def test_bad_requests_get_a_v2_error(
    client: FlaskClient, body: dict, status: int, text: str
) -> None:
    if "raw" in body:
        response = _post_binary(client, body["header"], body["raw"])
    else:
        response = client.post(INFER, json=body)
    assert response.status_code == status, response.data
    error = response.get_json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    assert text in error["error"]


RAW_CASES = [
    # (raw body, headers, status, text in the error)
    (b"", {}, 400, "empty"),
    (b'{"inputs": [', {}, 400, "malformed JSON"),
    (b"[1, 2]", {}, 400, "JSON object"),
    (b'{"inputs": []}', {HEADER: "abc"}, 400, "Inference-Header-Content-Length"),
    (b'{"inputs": []}', {HEADER: "999"}, 400, "Inference-Header-Content-Length"),
    (b"{}", {"Content-Type": "text/plain"}, 415, "text/plain"),
    (b"{}", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415, "gzip"),
    (b"{" + b" " * 70_000 + b"}", {}, 413, "too large"),
]


@pytest.mark.parametrize(
    ("raw", "headers", "status", "text"),
    RAW_CASES,
    ids=[
        "empty",
        "malformed",
        "not-an-object",
        "bad-header",
        "header-too-long",
        "text",
        "gzip",
        "big",
    ],
)
def test_bad_bodies_get_a_v2_error(
    client: FlaskClient, raw: bytes, headers: dict, status: int, text: str
) -> None:
    response = client.post(INFER, data=raw, headers=headers)
    assert response.status_code == status, response.data
    assert text in response.get_json()["error"]


def test_predict_proba_of_a_regressor_is_400(client: FlaskClient) -> None:
    body = {"inputs": [_input(np.zeros((1, 10)))], "outputs": [{"name": "predict_proba"}]}
    response = client.post("/v2/models/diabetes/infer", json=body)
    assert response.status_code == 400
    assert "no output 'predict_proba'" in response.get_json()["error"]


def test_non_finite_values_name_the_row_and_feature(client: FlaskClient) -> None:
    body = (
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, NaN, 4]}]}'
    )
    response = client.post(INFER, data=body)
    assert response.status_code == 400
    assert "petal length (cm)" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/nope/ready", 404),
        ("POST", "/v2/models/nope/infer", 404),
        ("GET", "/v2/models/iris/versions/9", 404),
        ("GET", "/v2/models/iris/versions/latest", 404),
        ("POST", "/v2/models/iris/versions/9/infer", 404),
        ("GET", "/v2/models/iris/config", 404),
        ("GET", INFER, 405),
    ],
    ids=["model", "ready", "infer", "version", "version-not-int", "pinned-infer", "route", "405"],
)
def test_unknown_models_versions_and_routes_get_a_v2_error(
    client: FlaskClient, method: str, path: str, status: int
) -> None:
    response = client.open(path, method=method, json=_request())
    assert response.status_code == status
    error = response.get_json()
    assert list(error) == ["error"] and error["error"]


def test_v1_errors_keep_their_own_shape(client: FlaskClient) -> None:
    body = client.post("/v1/models/nope/predict", json={"instances": [IRIS_ROW]}).get_json()
    assert body["error"]["code"] == "model_not_found"
