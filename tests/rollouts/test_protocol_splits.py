"""V2 `/infer` and MLflow `/invocations` on a split alias: the A/B report, the shadow and the
prediction log see their traffic as they see /v1's (one dataplane behind every front door)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.api.state import get_state
from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW

V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}
REQUESTS = {
    "v1": ("/v1/models/iris/predict", {"instances": [IRIS_ROW]}),
    "v2": ("/v2/models/iris/infer", V2_BODY),
    "mlflow": ("/invocations", {"instances": [IRIS_ROW]}),
}


@pytest.fixture
def app(
    store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path, make_app: Callable[..., Flask]
) -> Flask:
    """iris v1 and v2 split 50/50 (sticky) on production, v1 shadowing it."""
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    store.route("iris", {1: 50, 2: 50}, sticky=True, actor="t")
    store.shadow("iris", 1, actor="t")
    return make_app()


def send(client: FlaskClient, protocol: str, key: str, path: str | None = None) -> tuple[str, int]:
    """One request; returns (request id, version that served it). Closing runs the shadow."""
    default_path, body = REQUESTS[protocol]
    response = client.post(path or default_path, json=body, headers={"X-Routing-Key": key})
    response.close()  # what gunicorn does after sending
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.headers["X-Request-ID"], int(response.headers["X-Model-Version"])


def logged(app: Flask) -> list[dict[str, Any]]:
    recorder = get_state(app).recorder
    recorder.flush()  # type: ignore[attr-defined]
    with sqlite3.connect(recorder.datastore.path) as conn:  # type: ignore[attr-defined]
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM predictions ORDER BY id")]


@pytest.mark.parametrize("protocol", ["v2", "mlflow"])
def test_split_traffic_appears_per_variant_in_the_ab_report(app: Flask, protocol: str) -> None:
    client = app.test_client()
    served = Counter(send(client, protocol, f"user-{i}")[1] for i in range(40))
    assert set(served) == {1, 2}
    body = client.get("/v1/models/iris/ab?window=1h&alias=production").get_json()
    assert {v["variant"]: v["requests"] for v in body["variants"]} == {
        f"v{version}": n for version, n in served.items()
    }
    assert body["shadows"][0]["version"] == 1 and body["shadows"][0]["requests"] == 40


@pytest.mark.parametrize("protocol", ["v2", "mlflow"])
def test_shadow_sees_the_traffic_of_every_protocol(
    app: Flask, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    with caplog.at_level("INFO", logger="serving.shadow"):
        request_id, _ = send(client, protocol, "user-1")
    line = next(r for r in caplog.records if r.getMessage() == "shadow")
    assert line.request_id == request_id and line.version == 1  # type: ignore[attr-defined]
    shadow_rows = [r for r in logged(app) if r["shadow"]]
    assert [(r["request_id"], r["version"], r["alias"]) for r in shadow_rows] == [
        (request_id, 1, "production")
    ]


@pytest.mark.parametrize("protocol", ["v2", "mlflow"])
def test_prediction_log_rows_carry_alias_and_variant(app: Flask, protocol: str) -> None:
    client = app.test_client()
    for i in range(10):
        send(client, protocol, f"user-{i}")
    primaries = [r for r in logged(app) if not r["shadow"]]
    assert len(primaries) == 10
    assert all(r["alias"] == "production" for r in primaries)
    assert all(r["variant"] == f"v{r['version']}" for r in primaries)


def test_a_routing_key_gets_the_same_version_on_every_protocol(app: Flask) -> None:
    client = app.test_client()
    for i in range(20):
        key = f"user-{i}"
        assert len({send(client, protocol, key)[1] for protocol in REQUESTS}) == 1


def test_pinned_v2_version_has_no_variant_and_no_shadow(app: Flask) -> None:
    client = app.test_client()
    request_id, version = send(client, "v2", "user-1", "/v2/models/iris/versions/2/infer")
    rows = [r for r in logged(app) if r["request_id"] == request_id]
    assert version == 2
    assert [(r["version"], r["alias"], r["variant"], r["shadow"]) for r in rows] == [
        (2, None, None, 0)
    ]


def test_v2_input_refused_after_routing_counts_against_its_variant(app: Flask) -> None:
    bad = {"inputs": [{**V2_BODY["inputs"][0], "shape": [1, 3], "data": IRIS_ROW[:3]}]}
    response = app.test_client().post(
        "/v2/models/iris/infer", json=bad, headers={"X-Routing-Key": "user-1"}
    )
    assert response.status_code == 400
    (row,) = logged(app)
    assert row["status"] == 400 and row["variant"] == f"v{row['version']}"
    assert row["inputs"] is None and row["outputs"] is None
    assert response.headers["X-Model-Version"] == str(row["version"])
