"""The MLflow scoring protocol (/invocations, /ping, /version) over the same core as /v1."""

from __future__ import annotations

import io
import json
import logging
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.store.model_store import ModelStore

REPO = Path(__file__).resolve().parents[2]
NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
LABELS = ["setosa", "virginica"]
JSON = "application/json"
CSV = "text/csv"


@pytest.fixture
def mlflow_client(served: ModelStore, make_app: Callable[..., Flask]) -> FlaskClient:
    """iris and diabetes deployed, iris the default model."""
    return make_app(default_model="iris").test_client()


def _records(rows: list[list[float]], names: list[str] = NAMES) -> list[dict[str, float]]:
    return [dict(zip(names, row)) for row in rows]


def _columns(rows: list[list[float]]) -> dict[str, list[float]]:
    return {name: [row[j] for row in rows] for j, name in enumerate(NAMES)}


def _csv(names: list[str], rows: list[list[Any]]) -> str:
    return pd.DataFrame(rows, columns=names).to_csv(index=False)


def _error(response: Any, status: int) -> str:
    """The message of an MLflow-shaped error with this status (and nothing else in the body)."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error_code", "message"}, body
    return str(body["message"])


# -- JSON input formats ------------------------------------------------------------------------

GOOD_PAYLOADS = [
    {"dataframe_split": {"columns": NAMES, "data": ROWS}},
    {"dataframe_split": {"columns": NAMES[::-1], "data": [row[::-1] for row in ROWS]}},
    {"dataframe_split": {"columns": NAMES, "data": ROWS, "index": [7, 8]}},
    {"dataframe_split": {"data": ROWS}},
    {"dataframe_records": _records(ROWS)},
    {"dataframe_records": _records([r[::-1] for r in ROWS], NAMES[::-1])},
    {"instances": ROWS},
    {"instances": _records(ROWS)},
    {"instances": _columns(ROWS)},
    {"inputs": ROWS},
    {"inputs": _records(ROWS)},
    {"inputs": _columns(ROWS)},
    {"inputs": ROWS, "params": {"predict_method": "predict"}, "unknown": True},
]
GOOD_IDS = [
    "split",
    "split-reordered-columns",
    "split-with-index",
    "split-without-columns",
    "records",
    "records-any-key-order",
    "instances-rows",
    "instances-objects",
    "instances-column-dict",
    "inputs-rows",
    "inputs-objects",
    "inputs-column-dict",
    "params-and-unknown-fields-ignored",
]


@pytest.mark.parametrize("payload", GOOD_PAYLOADS, ids=GOOD_IDS)
def test_every_mlflow_json_format_predicts(mlflow_client: FlaskClient, payload: Any) -> None:
    response = mlflow_client.post("/invocations", json=payload)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"predictions": LABELS}
    assert response.headers["X-Model-Version"] == "1"
    assert response.headers["X-Request-ID"]


def test_json_charset_utf8_is_accepted_in_any_case(mlflow_client: FlaskClient) -> None:
    response = mlflow_client.post(
        "/invocations",
        data=json.dumps({"inputs": ROWS}),
        content_type="application/json; charset=UTF-8",
    )
    assert response.get_json() == {"predictions": LABELS}


BAD_PAYLOADS = [
    ({"inputs": ROWS, "instances": ROWS}, "exactly one of the fields"),
    ({"data": ROWS}, "exactly one of the fields"),
    ([ROWS], "received a list"),
    ({"dataframe_split": {"columns": NAMES}}, "'data' field"),
    ({"dataframe_split": {"columns": NAMES, "data": ROWS, "dtype": "f8"}}, "'data' field"),
    ({"dataframe_split": [ROWS]}, "'data' field"),
    ({"dataframe_split": {"columns": NAMES, "data": [[1.0, 2.0, 3.0]]}}, "row 0"),
    ({"dataframe_split": {"columns": NAMES, "data": ROWS, "index": [1]}}, "'index'"),
    ({"dataframe_records": {"a": [1.0]}}, "list of records"),
    ({"inputs": {**_columns(ROWS), NAMES[0]: [1.0]}}, "same length"),
    ({"inputs": "abc"}, "received a string"),
    (
        {"dataframe_split": {"columns": [*NAMES[:3], "petal colour"], "data": ROWS}},
        "unknown column 'petal colour'",
    ),
    (
        {"dataframe_split": {"columns": NAMES[:3], "data": [r[:3] for r in ROWS]}},
        "missing column 'petal width (cm)'",
    ),
    (
        {"dataframe_split": {"columns": [*NAMES[:3], NAMES[0]], "data": ROWS}},
        "duplicate column",
    ),
    ({"inputs": [[5.1, "wide", 1.4, 0.2]]}, "feature 'sepal width (cm)'"),
    ({"dataframe_records": [{**_records(ROWS)[0], "colour": "red"}]}, "unknown feature"),
    ({"inputs": []}, "no rows"),
    ({"inputs": ROWS * 51}, "too many instances"),
]
BAD_IDS = [
    "two-format-fields",
    "no-format-field",
    "top-level-list",
    "split-without-data",
    "split-unknown-field",
    "split-not-an-object",
    "split-row-shorter-than-columns",
    "split-index-length",
    "records-not-a-list",
    "column-dict-unequal-lengths",
    "inputs-a-string",
    "unknown-column",
    "missing-column",
    "duplicate-column",
    "string-for-number",
    "record-with-extra-feature",
    "no-rows",
    "over-max-instances",
]


@pytest.mark.parametrize(("payload", "fragment"), BAD_PAYLOADS, ids=BAD_IDS)
def test_bad_json_input_is_400_bad_request_naming_the_problem(
    mlflow_client: FlaskClient, payload: Any, fragment: str
) -> None:
    response = mlflow_client.post("/invocations", json=payload)
    assert fragment in _error(response, 400)
    assert response.get_json()["error_code"] == "BAD_REQUEST"


def test_malformed_json_is_400_bad_request(mlflow_client: FlaskClient) -> None:
    response = mlflow_client.post("/invocations", data=b'{"inputs": [[1,', content_type=JSON)
    assert "malformed JSON" in _error(response, 400)


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_with_header_predicts(mlflow_client: FlaskClient) -> None:
    response = mlflow_client.post("/invocations", data=_csv(NAMES, ROWS), content_type=CSV)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"predictions": LABELS}


def test_csv_columns_are_matched_by_name_in_any_order(mlflow_client: FlaskClient) -> None:
    body = _csv(NAMES[::-1], [row[::-1] for row in ROWS])
    response = mlflow_client.post("/invocations", data=body, content_type="text/csv; charset=utf-8")
    assert response.get_json() == {"predictions": LABELS}


BAD_CSV = [
    (_csv([*NAMES, "colour"], [[*r, "red"] for r in ROWS]), "unknown column 'colour'"),
    (_csv(NAMES[:3], [r[:3] for r in ROWS]), "missing column 'petal width (cm)'"),
    (_csv(NAMES, [[5.1, "wide", 1.4, 0.2]]), "feature 'sepal width (cm)': expected a number"),
    (_csv(NAMES, [[5.1, 3.5, 1.4, None]]), "NaN"),
    (pd.DataFrame(ROWS, columns=NAMES).to_csv(), "index=False"),
    (",".join(NAMES) + "\n5.1,3.5,1.4,0.2,9.9,9.9\n", "more fields than the header"),
    (",".join(NAMES) + "\n", "no rows"),
    ("", "cannot read the body as CSV"),
    ((",".join(NAMES) + "\n").encode() + b"\xff\xfe,1,2,3\n", "cannot read the body as CSV"),
]
BAD_CSV_IDS = [
    "extra-column",
    "missing-column",
    "string-in-numeric-column",
    "empty-cell",
    "index-column-written",
    "row-longer-than-header",
    "header-only",
    "empty-body",
    "not-utf8",
]


@pytest.mark.parametrize(("body", "fragment"), BAD_CSV, ids=BAD_CSV_IDS)
def test_bad_csv_is_400_naming_the_problem(
    mlflow_client: FlaskClient, body: str | bytes, fragment: str
) -> None:
    response = mlflow_client.post("/invocations", data=body, content_type=CSV)
    assert fragment in _error(response, 400)


# -- content types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ("application/json; charset=latin-1", "utf-8"),
        ("text/csv; charset=latin-1", "utf-8"),
        ("text/plain", "application/json or text/csv"),
        ("application/x-www-form-urlencoded", "application/json or text/csv"),
        (None, "got none"),
        ("application/json; format=pandas-split", "format"),
    ],
    ids=["json-latin-1", "csv-latin-1", "text-plain", "form", "none", "mlflow-1.x-format"],
)
def test_unsupported_content_type_is_415_with_a_readable_message(
    mlflow_client: FlaskClient, content_type: str | None, fragment: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = mlflow_client.post(
        "/invocations", data=json.dumps({"inputs": ROWS}), headers=headers
    )
    assert fragment in _error(response, 415)


# -- which model -------------------------------------------------------------------------------


def test_the_only_deployed_model_is_the_default(
    store: ModelStore, iris_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="test")
    client = make_app().test_client()
    assert client.post("/invocations", json={"inputs": ROWS}).get_json()["predictions"] == LABELS


def test_the_setting_picks_the_default_among_several(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    client = make_app(default_model="diabetes").test_client()
    row = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]
    response = client.post("/invocations", json={"inputs": [row]})
    assert response.status_code == 200
    assert isinstance(response.get_json()["predictions"][0], float)


def test_several_models_and_no_setting_is_404_naming_the_setting(client: FlaskClient) -> None:
    response = client.post("/invocations", json={"inputs": ROWS})
    message = _error(response, 404)
    assert "SERVING_DEFAULT_MODEL" in message and "diabetes, iris" in message
    assert response.get_json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_a_default_model_that_is_not_deployed_is_404_naming_the_setting(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    client = make_app(default_model="churn").test_client()
    assert "SERVING_DEFAULT_MODEL='churn'" in _error(client.post("/invocations", json={}), 404)


def test_empty_store_is_404(store: ModelStore, make_app: Callable[..., Flask]) -> None:
    response = make_app().test_client().post("/invocations", json={"inputs": ROWS})
    assert "0 models are deployed" in _error(response, 404)


# -- other models --------------------------------------------------------------------------------


@pytest.fixture
def churn_client(
    store: ModelStore, mixed_artifact: tuple[Path, Path], make_app: Callable[..., Flask]
) -> FlaskClient:
    """Only the mixed ColumnTransformer pipeline (numbers and strings) is deployed."""
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, activate=True, actor="test")
    return make_app().test_client()


CHURN = [
    {"age": 30, "income": 80000.0, "city": "paris", "plan": "pro"},
    {"age": 50, "income": 20000.0, "city": "nice", "plan": "free"},
]


def test_mixed_pipeline_takes_dataframe_records(churn_client: FlaskClient) -> None:
    response = churn_client.post("/invocations", json={"dataframe_records": CHURN})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"predictions": ["churn", "stay"]}


def test_mixed_pipeline_takes_csv_in_any_column_order(churn_client: FlaskClient) -> None:
    body = pd.DataFrame(CHURN)[["plan", "city", "income", "age"]].to_csv(index=False)
    response = churn_client.post("/invocations", data=body, content_type=CSV)
    assert response.get_json() == {"predictions": ["churn", "stay"]}


def test_mixed_pipeline_unknown_category_is_400_not_500(churn_client: FlaskClient) -> None:
    rows = [{**CHURN[0], "city": "atlantis"}]
    response = churn_client.post("/invocations", json={"dataframe_records": rows})
    assert "rejected" in _error(response, 400)


def test_unnamed_model_takes_columns_by_position(
    store: ModelStore, unnamed_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("plain", unnamed_artifact, activate=True, actor="test")
    client = make_app().test_client()
    split = '{"dataframe_split": ' + pd.DataFrame(ROWS).to_json(orient="split") + "}"
    as_split = client.post("/invocations", data=split, content_type=JSON)
    as_csv = client.post("/invocations", data=_csv(["a", "b", "c", "d"], ROWS), content_type=CSV)
    assert as_split.get_json() == as_csv.get_json() == {"predictions": [0, 2]}
    records = client.post("/invocations", json={"dataframe_records": _records(ROWS)})
    assert "no feature names" in _error(records, 400)


# -- ping, version, errors on these paths ------------------------------------------------------


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_ping_is_200_when_the_default_model_can_answer(
    mlflow_client: FlaskClient, path: str
) -> None:
    response = mlflow_client.get(path)
    assert response.status_code == 200 and response.get_data() == b"\n"


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_ping_follows_readiness_with_several_models_and_no_default(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path)  # iris and diabetes deployed: no default, but all ready
    assert response.status_code == 200 and response.get_data() == b"\n"


def test_ping_is_503_naming_what_is_not_ready(
    served: ModelStore, iris_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    served.register("broken", iris_artifact, activate=True, actor="t")
    (served.version_dir("broken", 1) / "model.joblib").write_bytes(b"damaged")
    response = make_app().test_client().get("/ping")
    assert "broken:production" in _error(response, 503)
    assert response.get_json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_ping_is_503_when_the_default_model_is_not_deployed(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    response = make_app(default_model="nope").test_client().get("/ping")
    assert "SERVING_DEFAULT_MODEL" in _error(response, 503)


def test_version_is_the_package_version(mlflow_client: FlaskClient) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    response = mlflow_client.get("/version")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == pyproject["project"]["version"]


def test_wrong_method_is_405_in_mlflow_shape_with_allow(mlflow_client: FlaskClient) -> None:
    response = mlflow_client.get("/invocations")
    assert "GET" in _error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_413_in_mlflow_shape(mlflow_client: FlaskClient) -> None:
    big = json.dumps({"inputs": ROWS * 3000})
    assert "too large" in _error(
        mlflow_client.post("/invocations", data=big, content_type=JSON), 413
    )
    chunked = mlflow_client.post(
        "/invocations",
        input_stream=io.BytesIO(_csv(NAMES, ROWS * 3000).encode()),
        headers={"Content-Type": CSV, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert "too large" in _error(chunked, 413)


def test_native_paths_keep_the_native_error_shape(mlflow_client: FlaskClient) -> None:
    response = mlflow_client.post("/v1/models/nope/predict", json={"instances": ROWS})
    assert response.status_code == 404 and "error" in response.get_json()
    assert mlflow_client.get("/health/ready").get_json() == {"status": "ready"}


# -- the request log line and StatsD -----------------------------------------------------------


def test_request_log_line_names_model_version_and_rows(
    mlflow_client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="serving.request"):
        mlflow_client.post("/invocations", json={"inputs": ROWS})
    record = next(r for r in caplog.records if r.name == "serving.request")
    assert (record.path, record.status) == ("/invocations", 200)  # type: ignore[attr-defined]
    assert (record.model, record.version, record.rows) == ("iris", 1, 2)  # type: ignore[attr-defined]


def test_statsd_gets_the_prediction_timer_and_class_counters(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(2.0)
        app = make_app(
            default_model="iris",
            statsd_host="127.0.0.1",
            statsd_port=udp.getsockname()[1],
            statsd_prefix="t",
        )
        app.test_client().post("/invocations", json={"inputs": ROWS})
        lines: set[str] = set()
        while not any(line.startswith("t.request.iris.1:") for line in lines):
            lines.update(udp.recv(65536).decode().splitlines())
    assert {"t.predictions.iris.setosa:1|c", "t.predictions.iris.virginica:1|c"} <= lines


# -- what an MLflow user's client sends ----------------------------------------------------------


def test_a_plain_mlflow_client_payload_works(mlflow_client: FlaskClient) -> None:
    """What users write for `mlflow models serve`: DataFrame.to_json(orient="split")."""
    frame = pd.DataFrame(ROWS, columns=NAMES)
    body = '{"dataframe_split": ' + frame.to_json(orient="split") + "}"
    response = mlflow_client.post("/invocations", data=body, headers={"Content-Type": JSON})
    assert json.loads(response.get_data())["predictions"] == LABELS
