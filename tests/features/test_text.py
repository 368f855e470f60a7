"""Text features: real pipelines fitted on a small corpus, registered without flags.

A bare vectorizer Pipeline (TfidfVectorizer, CountVectorizer, HashingVectorizer, then a
classifier) has one `text` feature, fed as a 1-D array of strings; a ColumnTransformer with a
text column among numeric ones takes it as that DataFrame column. Every answer is compared with
the pipeline's own predict, on /v1, /v2 (BYTES), /invocations and in batch; a number sent for a
text feature is a clear 422; the drift monitor reports the length and the out-of-vocabulary rate.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from serving.api.state import get_monitor
from serving.cli.main import main
from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
GOOD = ["good movie great fun", "great acting good story", "fun great good cast", "lovely film"]
BAD = ["bad film awful plot", "awful boring bad", "plot bad boring dull", "dull and awful"]
DOCS = (GOOD + BAD) * 6
LABELS = ([1] * len(GOOD) + [0] * len(BAD)) * 6
TEXTS = ["good fun", "an awful, boring plot!", "None", "great great movie", "zzz qqq"]


def _bare(tmp_path: Path, vectorizer: object, name: str = "reviews") -> Path:
    path = tmp_path / f"{name}.joblib"
    joblib.dump(make_pipeline(vectorizer, LogisticRegression()).fit(DOCS, LABELS), path)
    return path


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"review": DOCS, "stars": np.arange(len(DOCS), dtype=float) % 5})


@pytest.fixture
def tfidf(tmp_path: Path) -> Path:
    return _bare(tmp_path, TfidfVectorizer())


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    pre = ColumnTransformer(
        [("text", TfidfVectorizer(), "review"), ("num", StandardScaler(), ["stars"])]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(_frame(), LABELS)
    path = tmp_path / "mixed_text.joblib"
    joblib.dump(model, path)
    return path


@pytest.fixture
def text_store(store: ModelStore, tfidf: Path, mixed: Path) -> ModelStore:
    for name, artifact in (("reviews", tfidf), ("mixed", mixed)):
        args = ["--store", str(store.root), "models", "register", name, str(artifact)]
        assert main([*args, "--activate"]) == 0  # no flags: the text feature is detected
    return store


@pytest.fixture
def app(text_store: ModelStore, make_app: Callable[..., Flask]) -> Flask:
    return make_app(default_model="reviews")


def _own(artifact: Path, texts: list[str]) -> list[int]:
    return joblib.load(artifact).predict(texts).tolist()


def _own_mixed(artifact: Path, rows: list[dict[str, object]]) -> list[int]:
    return joblib.load(artifact).predict(pd.DataFrame(rows)).tolist()


def test_a_bare_vectorizer_pipeline_registers_with_one_text_feature(
    text_store: ModelStore,
) -> None:
    metadata = text_store.read_metadata("reviews", 1)
    assert metadata["features"] == [{"name": "text", "kind": "text", "nullable": False}]
    assert metadata["feature_names"] == ["text"] and metadata["frame_input"] is False
    kinds = {f["name"]: f["kind"] for f in text_store.read_metadata("mixed", 1)["features"]}
    assert kinds == {"review": "text", "stars": "numeric"}


@pytest.mark.parametrize(
    "vectorizer", [CountVectorizer(), HashingVectorizer(n_features=64)], ids=["count", "hashing"]
)
def test_count_and_hashing_vectorizers_serve_too(
    store: ModelStore, make_app: Callable[..., Flask], tmp_path: Path, vectorizer: object
) -> None:
    artifact = _bare(tmp_path, vectorizer, "other")
    store.register("other", artifact, activate=True, actor="test")
    client = make_app().test_client()
    response = client.post("/v1/models/other/predict", json={"instances": TEXTS})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == _own(artifact, TEXTS)


def test_v1_takes_strings_rows_and_named_objects(app: Flask, tfidf: Path) -> None:
    client = app.test_client()
    expected = _own(tfidf, TEXTS)
    proba = joblib.load(tfidf).predict_proba(TEXTS)
    bodies = [TEXTS, [[t] for t in TEXTS], [{"text": t} for t in TEXTS]]
    for instances in bodies:
        response = client.post(
            "/v1/models/reviews/predict", json={"instances": instances, "return_proba": True}
        )
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["predictions"] == expected
        assert np.allclose(body["probabilities"], proba)
    described = client.get("/v1/models/reviews").get_json()
    assert described["features"][0]["kind"] == "text" and described["input"] == "array"


@pytest.mark.parametrize("bad", [3, 2.5, None, True, {"a": 1}])
def test_a_non_string_for_a_text_feature_is_a_clear_422(app: Flask, bad: object) -> None:
    client = app.test_client()
    first = [bad] if type(bad) is not dict else [["fine"], [bad]]
    for instances in (first, [{"text": bad}], ["fine", bad]):
        response = client.post("/v1/models/reviews/predict", json={"instances": instances})
        assert response.status_code == 422, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "invalid_input"
        assert "feature 'text': expected a string (text feature)" in error["message"]
        assert "np." not in error["message"]


def test_a_column_transformer_takes_text_among_numbers(app: Flask, mixed: Path) -> None:
    client = app.test_client()
    rows = [{"review": t, "stars": float(i)} for i, t in enumerate(TEXTS)]
    for instances in (rows, [[r["review"], r["stars"]] for r in rows]):
        response = client.post("/v1/models/mixed/predict", json={"instances": instances})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["predictions"] == _own_mixed(mixed, rows)
    bad = client.post("/v1/models/mixed/predict", json={"instances": [{"review": 4, "stars": 1}]})
    assert bad.status_code == 422
    assert (
        "'review': expected a string (text feature), got a number (4)"
        in (bad.get_json()["error"]["message"])
    )
    word = client.post("/v1/models/mixed/predict", json={"instances": [["good", "x"]]})
    assert word.status_code == 422 and "'stars'" in word.get_json()["error"]["message"]


def test_v2_metadata_advertises_bytes_and_infer_takes_them(app: Flask, tfidf: Path) -> None:
    client = app.test_client()
    meta = client.get("/v2/models/reviews").get_json()
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["inputs"][0]["shape"] == [-1, 1]
    expected = _own(tfidf, TEXTS)
    for shape, data in (([len(TEXTS), 1], [[t] for t in TEXTS]), ([len(TEXTS)], TEXTS)):
        body = {"inputs": [{"name": "input-0", "shape": shape, "datatype": "BYTES", "data": data}]}
        response = client.post("/v2/models/reviews/infer", json=body)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["outputs"][0]["data"] == expected


def test_v2_binary_bytes_tensor(app: Flask, tfidf: Path) -> None:
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS)
    tensor = {"name": "input-0", "shape": [len(TEXTS), 1], "datatype": "BYTES"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
    response = app.test_client().post(
        "/v2/models/reviews/infer",
        data=header.encode() + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
        content_type="application/octet-stream",
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == _own(tfidf, TEXTS)
    cut = app.test_client().post(
        "/v2/models/reviews/infer",
        data=header.encode() + raw[:-2],
        headers={"Inference-Header-Content-Length": str(len(header))},
        content_type="application/octet-stream",
    )
    assert cut.status_code == 400


def test_v2_numbers_or_strings_in_the_wrong_place_are_400(app: Flask) -> None:
    client = app.test_client()
    numbers = {"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}
    response = client.post("/v2/models/reviews/infer", json=numbers)
    assert response.status_code == 400 and "text" in response.get_json()["error"]
    mixed = {"inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}]}
    response = client.post("/v2/models/reviews/infer", json=mixed)
    assert response.status_code == 400 and "only strings" in response.get_json()["error"]


def test_invocations_takes_every_mlflow_format(app: Flask, tfidf: Path) -> None:
    client = app.test_client()
    expected = _own(tfidf, TEXTS)
    bodies = [
        {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}},
        {"dataframe_records": [{"text": t} for t in TEXTS]},
        {"instances": TEXTS},
        {"inputs": {"text": TEXTS}},
    ]
    for body in bodies:
        response = client.post("/invocations", json=body)
        assert response.status_code == 200, (body, response.get_json())
        assert response.get_json()["predictions"] == expected
    csv = pd.DataFrame({"text": TEXTS}).to_csv(index=False)
    response = client.post("/invocations", data=csv, content_type="text/csv")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == expected  # "None" stays the text "None"


def _batch(store: ModelStore, name: str, data: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "serving", "--store", str(store.root), "batch"]
    return subprocess.run(
        [*command, name, str(data), "-o", str(out)], capture_output=True, timeout=120, cwd=ROOT
    )


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_batch_takes_a_text_column(
    text_store: ModelStore, tfidf: Path, mixed: Path, tmp_path: Path, suffix: str
) -> None:
    frame = _frame().iloc[:20].copy()
    frame["review"] = [f"{t} {i}" for i, t in enumerate(TEXTS * 4)]
    for name, columns, own in (
        ("reviews", {"review": "text"}, lambda f: _own(tfidf, f["text"].tolist())),
        ("mixed", {}, lambda f: _own_mixed(mixed, f.to_dict(orient="records"))),
    ):
        data, out = tmp_path / f"{name}.{suffix}", tmp_path / f"{name}.out.csv"
        table = frame[["review"]].rename(columns=columns) if columns else frame
        if suffix == "csv":
            table.to_csv(data, index=False)
        elif suffix == "parquet":
            table.to_parquet(data, index=False)
        else:
            table.to_json(data, orient="records", lines=True)
        result = _batch(text_store, name, data, out)
        assert result.returncode == 0, result.stderr.decode()
        scored = pd.read_csv(io.BytesIO(out.read_bytes()))
        assert scored["prediction"].tolist() == own(table)


def test_drift_reports_length_and_out_of_vocabulary_rate(
    store: ModelStore, make_app: Callable[..., Flask], tfidf: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "train.csv"
    pd.DataFrame({"text": DOCS}).to_csv(reference, index=False)
    store.register("reviews", tfidf, reference, activate=True, actor="test")
    stats = store.read_metadata("reviews", 1)["reference_stats"]["features"]["text"]
    assert stats["kind"] == "text" and stats["oov_rate"] == 0.0
    assert stats["min"] == min(map(len, DOCS)) and stats["max"] == max(map(len, DOCS))
    app = make_app(max_instances=1000)
    client = app.test_client()
    unknown = ["zebra quantum " * 8 + "good"] * 60  # long, mostly out of the vocabulary
    response = client.post("/v1/models/reviews/predict", json={"instances": unknown})
    assert response.status_code == 200
    get_monitor(app).flush()  # type: ignore[union-attr]
    report = client.get("/v1/models/reviews/monitoring?window=1h").get_json()
    (feature,) = report["features"]
    assert feature["kind"] == "text" and feature["rows"] == 60
    assert feature["oov_rate"] == pytest.approx(16 / 17) and feature["reference_oov_rate"] == 0.0
    assert feature["outside_range"] == 1.0 and feature["status"] == "alert"
    dashboard = client.get("/v1/dashboard/data?model=reviews&window=1h").get_json()
    (model,) = dashboard["models"]
    (row,) = model["drift"]["features"]  # the dashboard's drift table carries the same rate
    assert row["kind"] == "text" and row["oov_rate"] == pytest.approx(16 / 17)


def test_hashing_vectorizer_drift_is_length_only(store: ModelStore, tmp_path: Path) -> None:
    artifact = _bare(tmp_path, HashingVectorizer(n_features=64), "hashed")
    reference = tmp_path / "train.csv"
    pd.DataFrame({"review": DOCS}).to_csv(reference, index=False)
    store.register("hashed", artifact, reference, activate=True, actor="test")
    metadata = store.read_metadata("hashed", 1)
    assert metadata["feature_names"] == ["review"]  # the reference data's one column names it
    stats = metadata["reference_stats"]["features"]["review"]
    assert stats["kind"] == "text" and stats["oov_rate"] is None and stats["mean"] > 0


def test_onnx_of_an_ascii_tfidf_pipeline_passes_the_parity_gate_and_serves(
    text_store: ModelStore, make_app: Callable[..., Flask], tfidf: Path
) -> None:
    assert main(["--store", str(text_store.root), "optimize", "reviews", "1", "--onnx"]) == 0
    metadata = text_store.read_metadata("reviews", 2)
    assert metadata["format"] == "onnx" and metadata["parity"]["ok"] is True
    assert metadata["parity"]["rows"] > 2000
    assert main(["--store", str(text_store.root), "models", "promote", "reviews", "2"]) == 0
    client = make_app().test_client()
    response = client.post("/v1/models/reviews/predict", json={"instances": TEXTS})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == _own(tfidf, TEXTS)
    assert client.get("/v1/models/reviews").get_json()["runtime"] == "onnxruntime"


def test_onnx_refusals_are_one_line_and_sklearn_keeps_serving(
    text_store: ModelStore,
    make_app: Callable[..., Flask],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hashed = _bare(tmp_path, HashingVectorizer(n_features=64), "hashed")
    accents = tmp_path / "accents.joblib"
    docs = [d.replace("good", "très bon").replace("bad", "mauvais été") for d in DOCS]
    joblib.dump(make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(docs, LABELS), accents)
    text_store.register("hashed", hashed, activate=True, actor="test")
    text_store.register("accents", accents, activate=True, actor="test")
    cases = {
        "mixed": "cannot compile to ONNX: the model has text features (review)",
        "hashed": "Unable to find a shape calculator for type",
        "accents": "the ONNX model does not match the original; not registered",
    }
    for name, reason in cases.items():
        assert main(["--store", str(text_store.root), "optimize", name, "1", "--onnx"]) == 1
        first, *rest = capsys.readouterr().err.strip().splitlines()
        assert reason in first, first
        if name == "accents":  # the parity report follows, and the hint says why
            assert any("beyond plain ASCII words" in line for line in rest)
        else:
            assert rest == []
        assert text_store.versions(name) == [1]
    client = make_app().test_client()
    for name in ("mixed", "hashed", "accents"):
        instances = [{"review": "très bon", "stars": 1.0}] if name == "mixed" else ["très bon"]
        response = client.post(f"/v1/models/{name}/predict", json={"instances": instances})
        assert response.status_code == 200, response.get_json()


def lower(texts: list[str]) -> list[str]:
    return [t.lower() for t in texts]


def test_a_cleaning_step_before_the_vectorizer_and_the_text_flag(
    store: ModelStore, make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    from sklearn.preprocessing import FunctionTransformer

    model = make_pipeline(FunctionTransformer(lower), TfidfVectorizer(), LogisticRegression())
    artifact = tmp_path / "cleaned.joblib"
    joblib.dump(model.fit(DOCS, LABELS), artifact)
    root = ["--store", str(store.root), "models", "register"]
    assert main([*root, "cleaned", str(artifact), "--activate"]) == 0  # found without a flag
    assert main([*root, "named", str(artifact), "--activate", "--text", "review"]) == 0
    assert store.read_metadata("named", 1)["features"][0] == {
        "name": "review",
        "kind": "text",
        "nullable": False,
    }
    assert main([*root, "mixed", str(artifact), "--text", "a,b"]) != 0
    client = make_app().test_client()
    for name, key in (("cleaned", "text"), ("named", "review")):
        response = client.post(
            f"/v1/models/{name}/predict", json={"instances": [{key: t} for t in TEXTS]}
        )
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["predictions"] == model.predict(TEXTS).tolist()
