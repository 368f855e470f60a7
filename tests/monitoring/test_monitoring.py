"""Drift monitoring: PSI and status on synthetic data, and the drift scenario on a real model.

The tests that read or write the store run on SQLite and on a real PostgreSQL (`database_url`)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from flask import Flask
from sklearn.linear_model import LogisticRegression

from serving.api.state import get_monitor
from serving.cli.main import main
from serving.monitoring import drift
from serving.monitoring.monitor import Monitor
from serving.monitoring.report import live_counts
from serving.store.model_store import ModelStore
from serving.store.reference import numeric_histogram
from serving.telemetry.datastore import DataStore
from tests.conftest import ENGINES, engine_url

FEATURES = ["f0", "f1", "f2", "f3"]
MEANS = np.array([0.0, 5.0, -3.0, 10.0])
STDS = np.array([1.0, 2.0, 0.5, 3.0])


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    return engine_url(request)


def _draw(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(MEANS, STDS, size=(rows, 4)), columns=FEATURES)


@pytest.fixture(scope="module")
def drift_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 4-feature classifier on normal data (the class depends on f0 and f2) and its CSV."""
    root = tmp_path_factory.mktemp("drift")
    x = _draw(5000, seed=1)
    z = (x - MEANS) / STDS
    y = np.where(z["f0"] + z["f2"] > 0.5, "high", "low")
    artifact, reference = root / "model.joblib", root / "reference.csv"
    joblib.dump(LogisticRegression().fit(x, y), artifact)
    x.to_csv(reference, index=False)
    return artifact, reference


# -- pure functions ------------------------------------------------------------------------


def test_psi_is_zero_for_identical_and_grows_with_shift() -> None:
    ref = [0.25, 0.25, 0.25, 0.25]
    assert drift.psi(ref, [100, 100, 100, 100]) == pytest.approx(0.0)
    small = drift.psi(ref, [110, 100, 95, 95])
    large = drift.psi(ref, [10, 40, 150, 200])
    assert 0 < small < 0.1 < 0.25 < large


def test_psi_survives_empty_bins_with_epsilon() -> None:
    value = drift.psi([0.5, 0.5, 0.0], [50, 0, 50])
    assert np.isfinite(value) and value > 0.25


def test_status_thresholds() -> None:
    assert drift.status(0.05, 0.1, 0.25) == "ok"
    assert drift.status(0.1, 0.1, 0.25) == "warn"
    assert drift.status(0.3, 0.1, 0.25) == "alert"
    assert drift.status(None, 0.1, 0.25) == "insufficient_data"
    assert drift.worst(["ok", "alert", "warn"]) == "alert"


def test_numeric_feature_on_synthetic_data() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 10_000)
    edges = np.quantile(reference, np.linspace(0.1, 0.9, 9)).tolist()
    ref = {
        "kind": "numeric",
        "edges": edges,
        "proportions": [c / 10_000 for c in numeric_histogram(reference, edges)],
        "mean": 0.0,
        "std": 1.0,
        "min": float(reference.min()),
        "max": float(reference.max()),
        "missing_rate": 0.0,
    }

    def live(values: np.ndarray) -> dict[str, float]:
        bins = numeric_histogram(values, edges)
        out = {f"b{i}": float(c) for i, c in enumerate(bins)}
        out["sum"] = float(values.sum())
        out["above"] = float((values > ref["max"]).sum())
        out["missing"] = 20.0
        return out

    same = drift.numeric_feature("x", ref, live(rng.normal(0, 1, 2000)), 0.1, 0.25)
    assert same["status"] == "ok" and same["psi"] < 0.05
    assert same["p_value"] > 0.001
    assert same["missing_rate"] == pytest.approx(20 / 2020)
    shifted = drift.numeric_feature("x", ref, live(rng.normal(2, 1, 2000)), 0.1, 0.25)
    assert shifted["status"] == "alert" and shifted["psi"] > 1
    assert shifted["p_value"] < 1e-6
    assert shifted["mean_shift_std"] == pytest.approx(2.0, abs=0.1)
    assert shifted["outside_range"] > 0
    few = drift.numeric_feature("x", ref, live(rng.normal(5, 1, 10)), 0.1, 0.25)
    assert few["status"] == "insufficient_data" and few["psi"] is None


def test_categorical_feature_counts_unseen_categories() -> None:
    ref = {"kind": "categorical", "frequencies": {"a": 0.5, "b": 0.5}, "other": 0.0}
    same = drift.categorical_feature("c", ref, {"a": 500, "b": 510}, 0.1, 0.25)
    assert same["status"] == "ok"
    new = drift.categorical_feature("c", ref, {"a": 300, "b": 300, "__other__": 400}, 0.1, 0.25)
    assert new["status"] == "alert" and new["unseen_share"] == pytest.approx(0.4)


def test_report_without_reference_says_so() -> None:
    report = drift.drift_report(None, {}, 0.1, 0.25)
    assert report["reference"] is False and report["status"] == "no_reference"
    assert "without reference data" in report["note"]


# -- the scenario on a real model ----------------------------------------------------------


def _send(app: Flask, frame: pd.DataFrame, batch: int = 500) -> None:
    client = app.test_client()
    for start in range(0, len(frame), batch):
        rows = frame.iloc[start : start + batch].to_dict(orient="records")
        response = client.post(
            "/v1/models/drifty/predict", json={"instances": rows, "return_proba": True}
        )
        assert response.status_code == 200, response.get_json()


def _report(app: Flask, query: str = "") -> dict:
    response = app.test_client().get(f"/v1/models/drifty/monitoring{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_drift_scenario(
    store: ModelStore,
    make_app: Callable[..., Flask],
    drift_model: tuple[Path, Path],
    tmp_path: Path,
    database_url: str | None,
    request: pytest.FixtureRequest,
) -> None:
    artifact, reference = drift_model
    store.register("drifty", artifact, reference, activate=True, actor="test")
    # the shifted traffic in a store of its own: a second directory, or a second database
    other_url = request.getfixturevalue("pg_cluster").database() if database_url else None

    calm = make_app(max_instances=1000, data_dir=tmp_path / "calm")
    _send(calm, _draw(2000, seed=2))
    report = _report(calm, "?window=1h")
    assert report["reference"] is True and report["rows"] == 2000
    assert [f["name"] for f in report["features"]] == FEATURES
    assert {f["name"]: f["status"] for f in report["features"]} == dict.fromkeys(FEATURES, "ok")
    assert all(f["rows"] == 2000 for f in report["features"])
    assert report["status"] == "ok"
    calm_output = report["output"]["psi"]
    assert report["output"]["status"] == "ok"
    assert sum(report["predictions"].values()) == 2000
    assert report["confidence"]["rows"] == 2000
    assert abs(report["confidence"]["shift"]) < 0.05

    live = _draw(2000, seed=3)
    live["f2"] += 2 * STDS[2]
    shifted = make_app(max_instances=1000, data_dir=tmp_path / "shifted", database_url=other_url)
    _send(shifted, live)
    report = _report(shifted)
    statuses = {f["name"]: f["status"] for f in report["features"]}
    assert statuses == {"f0": "ok", "f1": "ok", "f2": "alert", "f3": "ok"}, report["features"]
    f2 = next(f for f in report["features"] if f["name"] == "f2")
    assert f2["psi"] > 0.25 and f2["p_value"] < 1e-6
    assert f2["mean_shift_std"] == pytest.approx(2.0, abs=0.15)
    assert f2["outside_range"] > 0
    assert report["status"] == "alert"
    assert report["output"]["psi"] > calm_output + 0.1  # the output drift moved
    assert report["output"]["psi"] > 0.1


def test_report_without_reference_and_bad_query(
    store: ModelStore, make_app: Callable[..., Flask], drift_model: tuple[Path, Path]
) -> None:
    store.register("drifty", drift_model[0], activate=True, actor="test")
    app = make_app(max_instances=1000)
    _send(app, _draw(100, seed=4))
    report = _report(app, "?version=1")
    assert report["reference"] is False and report["status"] == "no_reference"
    assert report["rows"] == 100 and sum(report["predictions"].values()) == 100
    bad = app.test_client().get("/v1/models/drifty/monitoring?window=forever")
    assert bad.status_code == 422
    missing = app.test_client().get("/v1/models/nope/monitoring")
    assert missing.status_code == 404


def test_counts_survive_a_new_monitor_and_sum_across_monitors(
    store: ModelStore,
    make_app: Callable[..., Flask],
    drift_model: tuple[Path, Path],
    tmp_path: Path,
    database_url: str | None,
) -> None:
    """Two apps (as two workers) over one data directory: one sum; a fresh app still sees it."""
    artifact, reference = drift_model
    store.register("drifty", artifact, reference, activate=True, actor="test")
    first, second = make_app(max_instances=1000), make_app(max_instances=1000)
    _send(first, _draw(300, seed=5))
    _send(second, _draw(200, seed=6))
    for app in (first, second):
        monitor = get_monitor(app)
        assert monitor is not None
        monitor.flush()
    assert _report(make_app())["rows"] == 500
    datastore = DataStore(tmp_path / "data", database_url)
    try:
        counts = live_counts(datastore, "drifty", 1, time.time() - 3600)
    finally:
        datastore.close()
    assert sum(v for k, v in counts["f0"].items() if k.startswith("b")) == 500


def test_cli_monitor(
    store: ModelStore,
    make_app: Callable[..., Flask],
    drift_model: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None,
) -> None:
    if database_url:  # the command line reads the server's database
        monkeypatch.setenv("SERVING_DATABASE_URL", database_url)
    artifact, reference = drift_model
    store.register("drifty", artifact, reference, activate=True, actor="test")
    app = make_app(max_instances=1000)
    _send(app, _draw(500, seed=7))
    get_monitor(app).flush()  # type: ignore[union-attr]
    base = ["--store", str(store.root), "monitor", "drifty", "--data-dir", str(tmp_path / "data")]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "drifty v1" in out and "f2" in out and "ok" in out
    assert main([*base, "--json", "--window", "30m"]) == 0
    assert '"rows": 500' in capsys.readouterr().out
    page = tmp_path / "report.html"
    assert main([*base, "--html", str(page)]) == 0
    html = page.read_text()
    assert html.count("<svg") == 6  # 4 features, predictions, confidence
    assert "f2: PSI" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in html


def test_binning_requests_together_counts_what_binning_each_alone_does(
    store: ModelStore, drift_model: tuple[Path, Path], tmp_path: Path
) -> None:
    """The flusher merges queued requests of one version and shape into one pass per feature
    (its cost per request is in bench/hotpath.py); the counts must be those of one pass per
    request, whatever the mix of sizes, probabilities and odd requests."""
    artifact, reference = drift_model
    store.register("drifty", artifact, reference, activate=True, actor="test")
    merged = Monitor(DataStore(tmp_path / "a"), store, flush_interval=3600)
    alone = Monitor(DataStore(tmp_path / "b"), store, flush_interval=3600)
    rng = np.random.default_rng(3)
    requests = []
    for i in range(300):
        rows = int(rng.integers(1, 12))
        features = _draw(rows, seed=100 + i).to_numpy().copy()
        if i % 7 == 0:
            features[0, 1] = np.nan  # a missing value
        predictions = rng.choice(["low", "high"], size=rows).astype(object)
        proba = rng.dirichlet([1, 1], size=rows) if i % 2 else None
        requests.append((features, predictions, proba))
    requests.append((_draw(3, seed=9).to_numpy()[:, :2], np.array(["low"] * 3), None))  # odd
    try:
        for features, predictions, proba in requests:
            merged.record("drifty", 1, features, predictions, proba)
        assert merged.accumulate() == len(requests)
        for features, predictions, proba in requests:
            with contextlib.suppress(Exception):
                alone._add("drifty", 1, time.time(), features, predictions, proba)

        def without_bucket(counts: dict) -> Counter:  # the two may straddle a minute
            out: Counter = Counter()
            for (model, version, _, feature, bin_), n in counts.items():
                out[(model, version, feature, bin_)] += n
            return out

        together, one_by_one = without_bucket(merged._counts), without_bucket(alone._counts)
        assert together.keys() == one_by_one.keys()
        # counts exactly; sums of values to rounding (they are added in another order)
        assert dict(together) == pytest.approx(dict(one_by_one), rel=1e-12, abs=1e-9)
        assert {k: v for k, v in together.items() if k[3] != "sum" and k[3] != "sumsq"} == {
            k: v for k, v in one_by_one.items() if k[3] != "sum" and k[3] != "sumsq"
        }
        assert without_bucket(merged._counts)[("drifty", 1, "__rows__", "n")] > 1500
    finally:
        merged.close()
        alone.close()
