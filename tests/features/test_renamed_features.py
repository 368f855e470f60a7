"""Feature names a library renamed: LightGBM fitted on breast_cancer's spaced column names.

LightGBM records `mean radius` as `mean_radius` in `feature_names_in_`. Registered with its own
training CSV, the version takes the training frame's names (in the model's order) on /v1,
/invocations (dataframe_split, dataframe_records, CSV) and in batch, and feeds the model the
columns in its own order under its own names; without reference data the renamed names are the
feature names. Each answer is compared with the model's own predict and predict_proba; any
feature-name warning fails the test (filterwarnings = error).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from sklearn.datasets import load_breast_cancer

from serving.cli.main import main
from serving.features.names import training_names
from serving.features.schema import InputSchema
from serving.store.model_store import ModelStore

lightgbm = pytest.importorskip("lightgbm")

ROOT = Path(__file__).resolve().parents[2]


def _training_frame() -> tuple[pd.DataFrame, pd.Series]:
    data = load_breast_cancer(as_frame=True)
    return data.data.iloc[:200], data.target.iloc[:200]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """The fitted model, its artifact and its training CSV (features and target)."""
    frame, target = _training_frame()
    model = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=7, random_state=0, verbose=-1)
    model.fit(frame, target)
    folder = tmp_path_factory.mktemp("lgbm")
    artifact, reference = folder / "lgbm.joblib", folder / "train.csv"
    joblib.dump(model, artifact)
    frame.assign(target=target).to_csv(reference, index=False)
    return model, artifact, reference


def register(store: ModelStore, artifact: Path, *extra: str) -> None:
    args = ["--store", str(store.root), "models", "register", "lgbm", str(artifact)]
    assert main([*args, *extra, "--activate"]) == 0


@pytest.fixture
def registered(store: ModelStore, trained: tuple[Any, Path, Path]) -> ModelStore:
    """The model registered with its training CSV as --reference-data, as the README does."""
    _, artifact, reference = trained
    register(store, artifact, "--reference-data", str(reference))
    return store


@pytest.fixture(params=[True, False], ids=["array", "frame"])
def app(
    request: pytest.FixtureRequest, registered: ModelStore, make_app: Callable[..., Flask]
) -> Flask:
    """Served as the loader chooses (a bare array) and with SERVING_ARRAY_INPUT off (a frame)."""
    app = make_app(default_model="lgbm", array_input=request.param)
    shown = app.test_client().get("/v1/models/lgbm").get_json()
    assert shown["input"] == ("array" if request.param else "frame")
    return app


def rows(n: int = 12) -> pd.DataFrame:
    """Rows the model did not see, in the user's column order and with the user's names."""
    return load_breast_cancer(as_frame=True).data.iloc[300 : 300 + n]


def answers(model: Any, frame: pd.DataFrame) -> tuple[list[int], list[list[float]]]:
    return model.predict(frame).tolist(), model.predict_proba(frame).tolist()


def assert_same(body: dict[str, Any], model: Any, frame: pd.DataFrame) -> None:
    predictions, probabilities = answers(model, frame)
    assert body["predictions"] == predictions
    if "probabilities" in body:
        np.testing.assert_allclose(body["probabilities"], probabilities, rtol=1e-12)


def test_the_training_frames_names_are_the_feature_names_in_model_order(
    app: Flask, store: ModelStore, trained: tuple[Any, Path, Path]
) -> None:
    model = trained[0]
    metadata = store.read_metadata("lgbm", 1)
    user_names = list(_training_frame()[0].columns)
    assert metadata["feature_names"] == user_names
    assert metadata["model_feature_names"] == [str(n) for n in model.feature_names_in_]
    assert "mean radius" in metadata["reference_stats"]["features"]
    described = app.test_client().get("/v1/models/lgbm").get_json()["features"]
    assert [f["name"] for f in described] == user_names


def test_the_model_is_fed_its_own_names_in_its_own_order(
    registered: ModelStore, trained: tuple[Any, Path, Path]
) -> None:
    model = trained[0]
    schema = InputSchema.from_metadata(registered.read_metadata("lgbm", 1))
    frame = rows(3)
    fed = schema.convert(frame[frame.columns[::-1]].to_dict("records"))
    assert list(fed.columns) == [str(n) for n in model.feature_names_in_]
    np.testing.assert_array_equal(fed.to_numpy(), frame.to_numpy())


def test_v1_takes_named_rows_in_any_order(app: Flask, trained: tuple[Any, Path, Path]) -> None:
    frame = rows()
    shuffled = frame[frame.columns[::-1]].to_dict("records")
    client = app.test_client()
    for instances in (frame.to_dict("records"), shuffled, frame.to_numpy().tolist()):
        body = {"instances": instances, "return_proba": True}
        response = client.post("/v1/models/lgbm/predict", json=body)
        assert response.status_code == 200, response.get_json()
        assert_same(response.get_json(), trained[0], frame)


@pytest.mark.parametrize("orient", ["split", "records"])
def test_invocations_takes_the_mlflow_dataframes(
    app: Flask, trained: tuple[Any, Path, Path], orient: str
) -> None:
    frame = rows()
    reordered = frame[frame.columns[::-1]]
    payload = {f"dataframe_{orient}": reordered.to_dict(orient=orient)}
    if orient == "split":
        del payload["dataframe_split"]["index"]
    response = app.test_client().post("/invocations", json=payload)
    assert response.status_code == 200, response.get_json()
    assert_same(response.get_json(), trained[0], frame)


def test_invocations_takes_the_training_csv_header(
    app: Flask, trained: tuple[Any, Path, Path]
) -> None:
    frame = rows()
    body = frame[frame.columns[::-1]].to_csv(index=False)
    response = app.test_client().post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 200, response.get_json()
    assert_same(response.get_json(), trained[0], frame)


def test_batch_scores_a_csv_with_the_training_names(
    registered: ModelStore, trained: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    frame = rows(40)
    data, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame[frame.columns[::-1]].to_csv(data, index=False)
    command = [sys.executable, "-m", "serving", "--store", str(registered.root), "batch"]
    result = subprocess.run(
        [*command, "lgbm", str(data), "-o", str(out), "--proba"],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()
    scored = pd.read_csv(io.BytesIO(out.read_bytes()))
    predictions, probabilities = answers(trained[0], frame)
    assert scored["prediction"].tolist() == predictions
    np.testing.assert_allclose(scored[["proba_0", "proba_1"]], probabilities, rtol=1e-12)


def test_without_reference_data_the_renamed_names_are_kept(
    store: ModelStore, trained: tuple[Any, Path, Path], make_app: Callable[..., Flask]
) -> None:
    model, artifact, _ = trained
    register(store, artifact)
    metadata = store.read_metadata("lgbm", 1)
    model_names = [str(n) for n in model.feature_names_in_]
    assert metadata["feature_names"] == model_names
    assert metadata.get("model_feature_names") is None
    frame = rows()
    renamed = frame.set_axis(model_names, axis=1).to_dict("records")
    body = {"instances": renamed, "return_proba": True}
    response = make_app().test_client().post("/v1/models/lgbm/predict", json=body)
    assert response.status_code == 200, response.get_json()
    assert_same(response.get_json(), model, frame)


@pytest.mark.parametrize(
    ("model_names", "columns", "expected"),
    [
        (["a_b", "c"], ["c", "a b", "target"], ["a b", "c"]),
        (["a_b", "c"], ["a_b", "c", "a b"], None),  # every model name is a column: kept
        (["a_b", "c"], ["a b", "a-b", "c"], None),  # two columns could be a_b: no match
        (["a_b", "c"], ["a b"], None),  # c is nowhere
        (["é_x"], ["é x"], ["é x"]),
    ],
    ids=["renamed", "exact", "ambiguous", "missing", "unicode"],
)
def test_renamed_names_match_one_to_one_or_not_at_all(
    model_names: list[str], columns: list[str], expected: list[str] | None
) -> None:
    assert training_names(model_names, columns) == expected


def test_a_reference_csv_without_a_feature_is_refused_naming_it(
    store: ModelStore,
    trained: tuple[Any, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame, _ = _training_frame()
    reference = tmp_path / "other.csv"
    frame.drop(columns=["mean radius"]).to_csv(reference, index=False)
    args = ["--store", str(store.root), "models", "register", "lgbm", str(trained[1])]
    assert main([*args, "--reference-data", str(reference)]) == 1
    assert "lacks feature columns: mean_radius" in capsys.readouterr().err
    assert not store.exists("lgbm")
