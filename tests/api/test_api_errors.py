"""Bad input: every case gets the one error shape, the right status, and nothing crashes."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from tests.conftest import IRIS_ROW

PREDICT = "/v1/models/iris/predict"
JSON = "application/json"


def _body(rows: str, extra: str = "") -> bytes:
    return ('{"instances": ' + rows + extra + "}").encode()


CASES = [
    # (path, content type, raw body, status, code, expected details subset)
    (PREDICT, JSON, b'{"instances": [[1, 2', 400, "malformed_request", {}),
    (PREDICT, JSON, b"", 400, "malformed_request", {}),
    (PREDICT, JSON, b"\xff\xfe{}", 400, "malformed_request", {}),
    (PREDICT, JSON, b"[" * 30_000 + b"]" * 30_000, 400, "malformed_request", {}),
    (PREDICT, "text/plain", _body("[[1,2,3,4]]"), 415, "unsupported_media_type", {}),
    (PREDICT, "application/x-www-form-urlencoded", b"a=1", 415, "unsupported_media_type", {}),
    (
        PREDICT,
        "application/json; charset=latin-1",
        _body("[[1,2,3,4]]"),
        415,
        "unsupported_media_type",
        {},
    ),
    (PREDICT, JSON, b"[1, 2]", 422, "invalid_input", {}),
    (
        PREDICT,
        JSON,
        b"{}",
        422,
        "invalid_input",
        {"instances": ["Missing data for required field."]},
    ),
    (PREDICT, JSON, _body("[]"), 422, "invalid_input", {}),
    (PREDICT, JSON, _body('"abc"'), 422, "invalid_input", {}),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,1.4,0.2]]", ', "extra": 1'),
        422,
        "invalid_input",
        {"extra": ["Unknown field."]},
    ),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,1.4,0.2]]", ', "return_proba": 1'),
        422,
        "invalid_input",
        {"return_proba": ["Must be true or false."]},
    ),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,1.4,0.2]]", ', "return_proba": "yes"'),
        422,
        "invalid_input",
        {},
    ),
    (PREDICT, JSON, _body("[[5.1,3.5,1.4]]"), 422, "invalid_input", {"row": 0, "got": 3}),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,1.4,0.2],[1,2,3,4,5]]"),
        422,
        "invalid_input",
        {"row": 1, "got": 5},
    ),
    (
        PREDICT,
        JSON,
        _body('[[5.1,"3.5",1.4,0.2]]'),
        422,
        "invalid_input",
        {"row": 0, "feature": "sepal width (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,1.4,0.2],[5.1,true,1.4,0.2]]"),
        422,
        "invalid_input",
        {"row": 1, "feature": "sepal width (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,null,0.2]]"),
        422,
        "invalid_input",
        {"row": 0, "feature": "petal length (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body("[[5.1,3.5,1.4,NaN]]"),
        422,
        "invalid_input",
        {"row": 0, "feature": "petal width (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body("[[Infinity,3.5,1.4,0.2]]"),
        422,
        "invalid_input",
        {"row": 0, "feature": "sepal length (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body("[[1,2,3,4],[5.1,-Infinity,1.4,0.2]]"),
        422,
        "invalid_input",
        {"row": 1, "column": 1},
    ),
    (PREDICT, JSON, _body("[[1e999,3.5,1.4,0.2]]"), 422, "invalid_input", {"row": 0, "column": 0}),
    (
        PREDICT,
        JSON,
        _body("[[1" + "0" * 400 + ",3.5,1.4,0.2]]"),
        422,
        "invalid_input",
        {"row": 0, "column": 0},
    ),
    (PREDICT, JSON, _body("[[[5.1,3.5,1.4,0.2]]]"), 422, "invalid_input", {"row": 0}),
    (PREDICT, JSON, _body("[5.1,3.5,1.4,0.2]"), 422, "invalid_input", {"row": 0}),
    (
        PREDICT,
        JSON,
        _body('[[5.1,3.5,1.4,0.2],{"sepal length (cm)": 1}]'),
        422,
        "invalid_input",
        {"row": 1},
    ),
    (
        PREDICT,
        JSON,
        _body(
            '[{"sepal length (cm)": 1, "sepal width (cm)": 1, '
            '"petal length (cm)": 1, "petal width (cm)": 1, "colour": 2}]'
        ),
        422,
        "invalid_input",
        {"row": 0, "feature": "colour"},
    ),
    (
        PREDICT,
        JSON,
        _body(
            '[{"sepal length (cm)": 1, "sepal width (cm)": 1, '
            '"petal length (cm)": 1, "petal wdth (cm)": 1}]'
        ),
        422,
        "invalid_input",
        {"row": 0, "feature": "petal wdth (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body('[{"sepal length (cm)": 1, "sepal width (cm)": 1, "petal length (cm)": 1}]'),
        422,
        "invalid_input",
        {"row": 0, "feature": "petal width (cm)"},
    ),
    (
        PREDICT,
        JSON,
        _body("[" + ",".join(["[1,2,3,4]"] * 101) + "]"),
        422,
        "invalid_input",
        {"instances": ["at most 100 instances per request"]},
    ),
    (PREDICT, JSON, _body("[[1,2,3,4]]") + b" " * (64 * 1024), 413, "payload_too_large", {}),
    (
        "/v1/models/diabetes/predict",
        JSON,
        _body("[[0,0,0,0,0,0,0,0,0,0]]", ', "return_proba": true'),
        422,
        "invalid_input",
        {"return_proba": ["not available for this model"]},
    ),
    ("/v1/models/nope/predict", JSON, _body("[[1,2,3,4]]"), 404, "model_not_found", {}),
    (
        "/v1/models/iris/versions/9/predict",
        JSON,
        _body("[[1,2,3,4]]"),
        404,
        "version_not_found",
        {},
    ),
    ("/v1/models/iris/versions/x/predict", JSON, _body("[[1,2,3,4]]"), 404, "not_found", {}),
    ("/v1/models/..%2F..%2Fetc/predict", JSON, _body("[[1,2,3,4]]"), 404, "not_found", {}),
    ("/v9/nothing", JSON, b"{}", 404, "not_found", {}),
]

IDS = [
    "truncated-json",
    "empty-body",
    "not-utf8",
    "nested-too-deep",
    "text-plain",
    "form",
    "latin1-charset",
    "array-body",
    "missing-instances",
    "empty-instances",
    "instances-string",
    "unknown-field",
    "proba-int",
    "proba-string",
    "too-few-features",
    "too-many-features",
    "string-for-number",
    "boolean",
    "null",
    "nan",
    "infinity",
    "minus-infinity",
    "overflow-float",
    "overflow-int",
    "nested-row",
    "flat-row",
    "rows-and-objects",
    "unknown-feature",
    "misspelt-feature",
    "missing-feature",
    "too-many-instances",
    "body-too-large",
    "proba-on-regressor",
    "unknown-model",
    "unknown-version",
    "non-integer-version",
    "path-traversal",
    "unknown-route",
]


@pytest.mark.parametrize(("path", "ctype", "raw", "status", "code", "details"), CASES, ids=IDS)
def test_bad_input_gets_the_error_shape(
    client: FlaskClient,
    path: str,
    ctype: str,
    raw: bytes,
    status: int,
    code: str,
    details: dict[str, object],
) -> None:
    response = client.post(path, data=raw, headers={"Content-Type": ctype})
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = json.loads(response.data)  # strict: never a bare NaN or an HTML page
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    for key, value in details.items():
        assert body["error"]["details"][key] == value


def test_json_with_nan_is_named_not_rejected_as_malformed(client: FlaskClient) -> None:
    response = client.post(PREDICT, data=_body("[[5.1,3.5,1.4,NaN]]"), content_type=JSON)
    assert "NaN" in response.get_json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413_not_cut(client: FlaskClient) -> None:
    big = _body("[" + ",".join(["[5.1,3.5,1.4,0.2]"] * 5000) + "]")
    response = client.post(
        PREDICT,
        input_stream=__import__("io").BytesIO(big),
        headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413


def test_chunked_body_under_the_limit_is_read_whole(client: FlaskClient) -> None:
    body = _body(json.dumps([IRIS_ROW] * 50))
    response = client.post(
        PREDICT,
        input_stream=__import__("io").BytesIO(body),
        headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 50


def test_missing_content_type_is_taken_as_json(client: FlaskClient) -> None:
    response = client.post(PREDICT, data=_body("[[5.1,3.5,1.4,0.2]]"))
    assert response.status_code == 200


def test_wrong_method_is_405_with_allow_header(client: FlaskClient) -> None:
    response = client.get(PREDICT)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_500_without_internals(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real model cannot be made to hit a true bug on demand: patch the core to raise one.
    import serving.dataplane

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(serving.dataplane, "infer", broken)
    response = client.post(PREDICT, json={"instances": [IRIS_ROW]}, headers={"X-Request-ID": "r-9"})
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"]["code"] == "internal_error"
    assert "secret" not in response.get_data(as_text=True)
    assert "r-9" in body["error"]["message"]


def test_non_finite_regression_output_is_valid_json(client: FlaskClient) -> None:
    # Extreme but finite inputs: whatever the model answers, the body must be strict JSON.
    row = [1e300] * 10
    response = client.post("/v1/models/diabetes/predict", json={"instances": [row]})
    json.loads(response.data)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/iris/versions/99999999999999999999999/predict",
        "/v2/models/iris/versions/99999999999999999999999/infer",
    ],
)
def test_a_version_beyond_64_bits_is_a_404_in_the_error_shape(
    client: FlaskClient, path: str
) -> None:
    response = client.post(path, json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert response.status_code == 404, response.get_data(as_text=True)
    assert "99999999999999999999999" in response.get_data(as_text=True)
