"""GET /metrics: Prometheus text whose counters match the requests sent, conventional names,
per-worker process gauges, and the multiprocess mode gunicorn uses (in a forked subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from serving.api.state import get_state
from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW

REPO = Path(__file__).resolve().parents[2]
FAMILIES = {
    "serving_requests": "counter",
    "serving_request_duration_seconds": "histogram",
    "serving_predictions": "counter",
    "serving_model_swaps": "counter",
    "serving_store_unavailable": "counter",
    "serving_in_flight_requests": "gauge",
    "serving_model_version": "gauge",
    "serving_feature_drift_psi": "gauge",
    "serving_prediction_cache_lookups": "counter",
    "serving_telemetry_dropped": "counter",
    "serving_process_cpu_seconds": "counter",
    "serving_process_resident_memory_bytes": "gauge",
}


def scrape(client: FlaskClient) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return samples_of(response.get_data(as_text=True))


def samples_of(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample with this name and exactly these labels (None when absent)."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


def requests_of(
    samples: list[Sample], model: str = "", version: str = "", status: str = "200"
) -> float | None:
    labels = {"model": model, "version": version, "variant": "", "status": status}
    return value(samples, "serving_requests_total", **labels)


def predict(client: FlaskClient, rows: list[list[float]], name: str = "iris") -> list[str]:
    response = client.post(f"/v1/models/{name}/predict", json={"instances": rows})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["predictions"]


def test_counters_match_the_requests_sent(client: FlaskClient) -> None:
    predicted: list[str] = []
    for rows in ([IRIS_ROW], [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]], [[5.9, 3.0, 4.2, 1.5]] * 3):
        predicted += predict(client, rows)
    for _ in range(2):  # wrong feature count: the model is known, so it is labelled
        assert (
            client.post("/v1/models/iris/predict", json={"instances": [[1.0]]}).status_code == 422
        )
    assert client.post("/v1/models/iris/predict", json={"rows": []}).status_code == 422
    predict(client, [[0.0] * 10], name="diabetes")
    assert client.get("/health/live").status_code == 200

    samples = scrape(client)
    assert requests_of(samples, "iris", "1") == 3
    assert requests_of(samples, "iris", "1", "422") == 2
    assert requests_of(samples, status="422") == 1  # refused before any model was chosen
    assert requests_of(samples, "diabetes", "1") == 1
    assert requests_of(samples) == 1  # /health/live; this scrape is counted after it renders
    by_class = {
        s.labels["class"]: s.value
        for s in samples
        if s.name == "serving_predictions_total" and s.labels["model"] == "iris"
    }
    assert by_class == {label: predicted.count(label) for label in set(predicted)}
    assert not [
        s
        for s in samples
        if s.name == "serving_predictions_total" and s.labels["model"] == "diabetes"
    ]
    histogram = {"model": "iris", "version": "1", "variant": ""}
    assert value(samples, "serving_request_duration_seconds_count", **histogram) == 5
    assert value(samples, "serving_request_duration_seconds_bucket", le="+Inf", **histogram) == 5
    assert 0 < value(samples, "serving_request_duration_seconds_sum", **histogram) < 5
    nameless = [
        s
        for s in samples
        if s.name.startswith("serving_request_duration") and not s.labels["model"]
    ]
    assert nameless == []  # health checks and scrapes stay out of the latency histogram

    assert requests_of(scrape(client)) == 2  # the first scrape, counted like any request


def test_exposition_parses_and_follows_naming_conventions(client: FlaskClient) -> None:
    predict(client, [IRIS_ROW])
    get_state(client.application).metrics.set_drift("iris", 1, "petal width (cm)", 0.02)
    response = client.get("/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {name: f.type for name, f in families.items()} == FAMILIES
    for name, family in families.items():
        assert family.documentation, name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name == f"{name}_total"
            elif family.type == "histogram":
                assert sample.name in {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
                assert name.endswith("_seconds")
            else:
                assert sample.name == name and not name.endswith("_total")
            assert "_created" not in sample.name
    buckets = [
        s.labels["le"]
        for s in families["serving_request_duration_seconds"].samples
        if "le" in s.labels
    ]
    assert buckets[0] == "0.0005" and buckets[-1] == "+Inf"


def test_in_flight_gauge_leaves_out_the_scrape_and_returns_to_zero(client: FlaskClient) -> None:
    predict(client, [IRIS_ROW])
    client.post("/v1/models/iris/predict", data=b"{", content_type="application/json")
    client.get("/no/such/route")
    assert value(scrape(client), "serving_in_flight_requests") == 0


def test_swaps_and_served_versions_per_worker(
    served: ModelStore, make_app: Callable[..., Flask], iris_artifact_v2: Path
) -> None:
    app = make_app()
    pid = str(os.getpid())
    samples = scrape(app.test_client())
    assert value(samples, "serving_model_swaps_total", model="iris", result="success") == 1
    version = {"model": "iris", "alias": "production", "pid": pid}
    assert value(samples, "serving_model_version", **version) == 1

    served.register("iris", iris_artifact_v2, actor="test")
    (served.version_dir("iris", 2) / "model.joblib").write_bytes(b"corrupt")
    served.promote("iris", 2, actor="test")
    get_state(app).loader.refresh()
    samples = scrape(app.test_client())
    assert value(samples, "serving_model_swaps_total", model="iris", result="failure") == 1
    assert value(samples, "serving_model_version", **version) == 1  # still serving 1


def test_requests_of_a_split_alias_are_labelled_by_variant(
    served: ModelStore, make_app: Callable[..., Flask], iris_artifact_v2: Path
) -> None:
    served.register("iris", iris_artifact_v2, actor="test")
    served.route("iris", {1: 50, 2: 50}, actor="test")
    client = make_app().test_client()
    for _ in range(40):
        predict(client, [IRIS_ROW])
    samples = [s for s in scrape(client) if s.name == "serving_requests_total"]
    by_variant = {
        (s.labels["version"], s.labels["variant"]): s.value
        for s in samples
        if s.labels["model"] == "iris"
    }
    assert set(by_variant) == {("1", "v1"), ("2", "v2")}  # 2 x 0.5**40: never one-sided
    assert sum(by_variant.values()) == 40


def test_set_drift_exposes_one_gauge_per_feature(client: FlaskClient) -> None:
    metrics = get_state(client.application).metrics
    metrics.set_drift("iris", 1, "petal width (cm)", 0.31)
    metrics.set_drift("iris", 1, "petal width (cm)", 0.12)  # the last value wins
    metrics.set_drift("iris", 1, "sepal width (cm)", 0.01)
    samples = scrape(client)
    psi = {s.labels["feature"]: s.value for s in samples if s.name == "serving_feature_drift_psi"}
    assert psi == {"petal width (cm)": 0.12, "sepal width (cm)": 0.01}


def test_process_cpu_and_memory_are_labelled_by_worker_pid(client: FlaskClient) -> None:
    samples = scrape(client)
    pid = str(os.getpid())
    assert value(samples, "serving_process_cpu_seconds_total", pid=pid) > 0
    assert value(samples, "serving_process_resident_memory_bytes", pid=pid) > 10 * 2**20


def test_metrics_route_is_in_the_openapi_document(client: FlaskClient) -> None:
    operation = client.get("/openapi.json").get_json()["paths"]["/metrics"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/plain; version=0.0.4"}


def test_multiprocess_mode_sums_workers_and_drops_the_live_gauges_of_dead_ones(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.telemetry.prom_workers"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(result.stdout)
    pids = {role: str(pid) for role, pid in out["pids"].items()}
    samples = samples_of(out["text"])
    assert requests_of(samples, "iris", "1") == 5  # 3 from the dead worker, 2 from the live one
    assert requests_of(samples, "iris", "1", "422") == 1
    assert value(samples, "serving_in_flight_requests") == 1  # the dead worker's is gone
    cpu = {s.labels["pid"] for s in samples if s.name == "serving_process_cpu_seconds_total"}
    assert cpu == {pids["parent"], pids["alive"]}
    version = [s.labels for s in samples if s.name == "serving_model_version"]
    assert version == [{"model": "iris", "alias": "production", "pid": pids["alive"]}]


def test_prometheus_updates_cost_microseconds_per_request() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.prometheus_cost", "--json", "--batches", "300"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    costs = {row["mode"]: row["median_us"] for row in json.loads(result.stdout)}
    print(f"prometheus cost per request (median µs): {costs}")
    assert set(costs) == {"single", "multiprocess"}
    # About 2 and 6 µs on a laptop-class CPU; the bound only catches an order-of-magnitude slip.
    assert all(cost < 50 for cost in costs.values()), costs
