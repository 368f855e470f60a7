"""Boolean features: a RandomForest fitted on bool columns, registered with its reference CSV.

The bool columns are recorded as `boolean` (not categorical) and take JSON true/false, CSV
True/False/true/false and Parquet bool on /v1, /invocations and in batch, fed as 1.0/0.0 the
way scikit-learn fed them when fitting; each answer is compared with the model's own predict.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from sklearn.ensemble import RandomForestClassifier

from serving.cli.main import main
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]


def _frame(n: int = 120) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "member": rng.random(n) < 0.5,
            "spend": rng.normal(10.0, 3.0, n),
            "promo": rng.random(n) < 0.3,
        }
    )
    target = (frame["member"] ^ (frame["spend"] > 10)).astype(int).to_numpy()
    return frame, target


@pytest.fixture
def forest(tmp_path: Path) -> tuple[Path, Path]:
    frame, target = _frame()
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(frame, target)
    artifact, reference = tmp_path / "bools.joblib", tmp_path / "train.csv"
    joblib.dump(model, artifact)
    frame.to_csv(reference, index=False)
    return artifact, reference


@pytest.fixture
def bool_store(store: ModelStore, forest: tuple[Path, Path]) -> ModelStore:
    artifact, reference = forest
    args = ["--store", str(store.root), "models", "register", "bools", str(artifact)]
    assert main([*args, "--reference-data", str(reference), "--activate"]) == 0
    return store


@pytest.fixture
def app(bool_store: ModelStore, make_app: Callable[..., Flask]) -> Flask:
    return make_app(default_model="bools")


ROWS = [[True, 12.5, False], [False, 7.0, True], [True, 9.0, True]]


def expected(artifact: Path, rows: list[list[object]]) -> list[int]:
    frame = pd.DataFrame(rows, columns=["member", "spend", "promo"])
    return joblib.load(artifact).predict(frame).tolist()


def test_bool_columns_are_recorded_as_boolean(bool_store: ModelStore) -> None:
    metadata = bool_store.read_metadata("bools", 1)
    kinds = {f["name"]: f["kind"] for f in metadata["features"]}
    assert kinds == {"member": "boolean", "spend": "numeric", "promo": "boolean"}
    stats = metadata["reference_stats"]["features"]
    assert stats["member"]["kind"] == "numeric" and 0.0 < stats["member"]["mean"] < 1.0


def test_v1_takes_true_and_false(app: Flask, forest: tuple[Path, Path]) -> None:
    client = app.test_client()
    objects = [dict(zip(["member", "spend", "promo"], row)) for row in ROWS]
    for instances in (ROWS, objects):
        response = client.post("/v1/models/bools/predict", json={"instances": instances})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["predictions"] == expected(forest[0], ROWS)


def test_a_boolean_for_a_numeric_feature_is_a_clear_422(app: Flask) -> None:
    response = app.test_client().post(
        "/v1/models/bools/predict", json={"instances": [[True, True, False]]}
    )
    assert response.status_code == 422
    message = response.get_json()["error"]["message"]
    assert "'spend'" in message and "a boolean (true)" in message and "np." not in message


@pytest.mark.parametrize("spelling", [("True", "False"), ("true", "false")], ids=["Title", "lower"])
def test_invocations_csv_takes_true_false(
    app: Flask, forest: tuple[Path, Path], spelling: tuple[str, str]
) -> None:
    text = {True: spelling[0], False: spelling[1]}
    lines = ["member,spend,promo"] + [f"{text[a]},{b},{text[c]}" for a, b, c in ROWS]
    response = app.test_client().post(
        "/invocations", data="\n".join(lines) + "\n", content_type="text/csv"
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == expected(forest[0], ROWS)


def test_invocations_csv_true_in_a_numeric_column_names_it_without_numpy(app: Flask) -> None:
    body = "member,spend,promo\nTrue,True,False\n"
    response = app.test_client().post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 400
    message = response.get_json()["message"]
    assert "'spend'" in message and "np." not in message


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_batch_takes_bool_columns(
    bool_store: ModelStore, forest: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    frame, _ = _frame(40)
    data = tmp_path / f"in.{suffix}"
    if suffix == "csv":
        frame.to_csv(data, index=False)
    elif suffix == "parquet":
        frame.to_parquet(data, index=False)
    else:
        frame.to_json(data, orient="records", lines=True)
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "serving", "--store", str(bool_store.root), "batch"]
    result = subprocess.run(
        [*command, "bools", str(data), "-o", str(out)], capture_output=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr.decode()
    scored = pd.read_csv(io.BytesIO(out.read_bytes()))
    assert scored["prediction"].tolist() == joblib.load(forest[0]).predict(frame).tolist()
