"""V2 for a model with categorical features among numbers: one tensor per feature (issue 18).

`GET /v2/models/<name>` must describe exactly the inputs `/infer` takes: here one tensor per
feature, BYTES for the categorical ones, FP64 (null where the feature is nullable) for numbers,
in JSON or binary. Every answer is compared with the pipeline's own predict.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from serving.store.base import StoreBase

INFER = "/v2/models/churn/infer"
HEADER = "Inference-Header-Content-Length"
ROWS = pd.DataFrame(
    {
        "age": [30.0, 50.0, 71.0],
        "income": [80_000.0, np.nan, 20_000.0],
        "city": ["paris", "nice", "lyon"],
        "plan": ["pro", "free", "pro"],
    }
)


@pytest.fixture(scope="module")
def imputer_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Imputer + scaler on age and income (income has missing values), one-hot on city, plan."""
    rng = np.random.default_rng(3)
    rows = 300
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "income": rng.normal(50_000, 15_000, rows),
            "city": rng.choice(["paris", "lyon", "nice"], rows),
            "plan": rng.choice(["free", "pro"], rows),
        }
    )
    target = np.where((frame["income"] > 50_000) & (frame["plan"] == "pro"), "churn", "stay")
    frame.loc[rng.random(rows) < 0.1, "income"] = np.nan
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=500))])
    model.fit(frame, target)
    work = tmp_path_factory.mktemp("imputer")
    path, reference = work / "imputer.joblib", work / "imputer.csv"
    joblib.dump(model, path)
    frame.to_csv(reference, index=False)
    return path, reference


@pytest.fixture
def client(
    store: StoreBase, imputer_artifact: tuple[Path, Path], make_app: Callable[..., Flask]
) -> FlaskClient:
    store.register("churn", *imputer_artifact, activate=True, actor="test")
    return make_app().test_client()


def _own(artifact: Path, rows: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    model = joblib.load(artifact)
    return model.predict(rows).tolist(), model.predict_proba(rows)


def _tensors(rows: pd.DataFrame, flat: bool = False) -> list[dict[str, Any]]:
    tensors = []
    for name in rows.columns:
        values = [None if v != v else v for v in rows[name].tolist()]  # NaN -> null
        numeric = rows[name].dtype.kind == "f"
        data = values if flat else [[v] for v in values]
        shape = [len(values)] if flat else [len(values), 1]
        tensor = {"name": name, "datatype": "FP64" if numeric else "BYTES", "shape": shape}
        tensors.append({**tensor, "data": data})
    return tensors


def _infer(client: FlaskClient, tensors: list[dict[str, Any]], proba: bool = False) -> Any:
    outputs = [{"name": "predict"}] + ([{"name": "predict_proba"}] if proba else [])
    return client.post(INFER, json={"inputs": tensors, "outputs": outputs})


def test_metadata_lists_one_tensor_per_feature(client: FlaskClient) -> None:
    inputs = client.get("/v2/models/churn").get_json()["inputs"]
    described = [(i["name"], i["datatype"], i["shape"], i["parameters"]) for i in inputs]
    assert described == [
        ("age", "FP64", [-1, 1], {"kind": "numeric", "nullable": True}),
        ("income", "FP64", [-1, 1], {"kind": "numeric", "nullable": True}),
        ("city", "BYTES", [-1, 1], {"kind": "categorical", "nullable": False}),
        ("plan", "BYTES", [-1, 1], {"kind": "categorical", "nullable": False}),
    ]


@pytest.mark.parametrize("flat", [False, True], ids=["n-by-1", "flat"])
def test_infer_takes_the_tensors_the_metadata_lists(
    client: FlaskClient, imputer_artifact: tuple[Path, Path], flat: bool
) -> None:
    metadata = client.get("/v2/models/churn").get_json()
    tensors = _tensors(ROWS, flat)
    assert [(t["name"], t["datatype"]) for t in tensors] == [
        (i["name"], i["datatype"]) for i in metadata["inputs"]
    ]
    response = _infer(client, list(reversed(tensors)), proba=True)  # any order
    assert response.status_code == 200, response.get_json()
    labels, proba = _own(imputer_artifact[0], ROWS)
    predict, probabilities = response.get_json()["outputs"]
    assert predict["data"] == labels and predict["datatype"] == "BYTES"
    got = np.asarray(probabilities["data"]).reshape(probabilities["shape"])
    np.testing.assert_allclose(got, proba, rtol=1e-12)


def test_integer_tensors_for_numbers(
    client: FlaskClient, imputer_artifact: tuple[Path, Path]
) -> None:
    rows = ROWS.fillna(40_000.0)
    tensors = _tensors(rows)
    tensors[0] = {**tensors[0], "datatype": "INT64", "data": [30, 50, 71]}
    response = _infer(client, tensors)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == _own(imputer_artifact[0], rows)[0]


def test_binary_tensors_per_feature_with_json_ones_among_them(
    client: FlaskClient, imputer_artifact: tuple[Path, Path]
) -> None:
    inputs, raw = [], b""
    for tensor in _tensors(ROWS):
        name, datatype = tensor["name"], tensor["datatype"]
        if name == "plan":  # this one stays JSON, between binary ones
            inputs.append(tensor)
            continue
        if datatype == "BYTES":
            chunk = b"".join(struct.pack("<I", len(v)) + v.encode() for v in ROWS[name])
        else:
            chunk = ROWS[name].to_numpy(dtype="<f8").tobytes()  # NaN: missing
        spec = {"name": name, "datatype": datatype, "shape": tensor["shape"]}
        inputs.append({**spec, "parameters": {"binary_data_size": len(chunk)}})
        raw += chunk
    header = json.dumps({"inputs": inputs}).encode()
    response = client.post(INFER, data=header + raw, headers={HEADER: str(len(header))})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == _own(imputer_artifact[0], ROWS)[0]
    cut = client.post(INFER, data=header + raw[:-3], headers={HEADER: str(len(header))})
    assert cut.status_code == 400 and "binary_data_size" in cut.get_json()["error"]


def _changed(index: int, **fields: Any) -> list[dict[str, Any]]:
    tensors = _tensors(ROWS)
    tensors[index] = {**tensors[index], **fields}
    return tensors


BAD = {
    "one-tensor": (
        [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        "unknown input 'input-0': this model takes one tensor per feature",
    ),
    "missing": (_tensors(ROWS)[:3], "no input 'plan'"),
    "twice": (_tensors(ROWS) + _tensors(ROWS)[:1], "input 'age' is given twice"),
    "bytes-for-number": (
        _changed(0, datatype="BYTES", data=["a", "b", "c"]),
        "input 'age': a numeric feature takes a numeric datatype (FP64), got BYTES",
    ),
    "number-for-category": (
        _changed(2, datatype="FP64", data=[1.0, 2.0, 3.0]),
        "input 'city': a categorical feature takes BYTES, got FP64",
    ),
    "rows-differ": (_changed(3, shape=[2, 1], data=[["pro"], ["free"]]), "2 rows"),
    "two-columns": (
        _changed(1, shape=[1, 3], data=[[1.0, 2.0, 3.0]]),
        "input 'income': expected shape [N] or [N, 1], got [1, 3]",
    ),
    "unknown-category": (_changed(2, data=[["paris"], ["berlin"], ["lyon"]]), None),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_wrong_tensors_get_a_v2_error_naming_the_input(client: FlaskClient, case: str) -> None:
    tensors, text = BAD[case]
    response = _infer(client, tensors)
    if text is None:  # handle_unknown="ignore": an unseen city is the model's to answer
        assert response.status_code == 200, response.get_json()
        return
    assert response.status_code == 400, response.get_json()
    assert text in response.get_json()["error"]


def test_a_null_where_the_feature_is_not_nullable_is_refused(
    client: FlaskClient, store: StoreBase, make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    store.register("churn", *_strict_copy(tmp_path), activate=True, actor="test")
    fresh = make_app().test_client()
    response = _infer(fresh, _tensors(ROWS))
    assert response.status_code == 400
    assert "income" in response.get_json()["error"], response.get_json()


def _strict_copy(tmp_path: Path) -> tuple[Path, Path]:
    """The same kind of pipeline without an imputer: no feature is nullable."""
    frame = ROWS.fillna(1.0)
    frame = pd.concat([frame] * 4, ignore_index=True)
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())])
    model.fit(frame, ["churn", "stay", "stay"] * 4)
    path, reference = tmp_path / "strict.joblib", tmp_path / "strict.csv"
    joblib.dump(model, path)
    frame.to_csv(reference, index=False)
    return path, reference
