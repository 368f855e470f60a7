"""Over HTTP, a damaged deployment.json answers in our error shape (never a 500 or a 422 with
internals), readiness is honest, and a worker's last good deployment keeps answering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Flask

from serving.api.state import get_state
from serving.store.model_store import ModelStore
from tests.store_damage import damage_deployment

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


def test_worker_with_a_last_good_deployment_still_answers_and_shows_why(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    app = make_app(admin_token=TOKEN)
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200  # loaded the good deployment
    damage_deployment(served, "iris")
    get_state(app).loader.refresh()  # the poller's next look at the store
    assert client.post("/v1/models/iris/predict", json=ROW).json["version"] == 1
    assert client.get("/health/ready").status_code == 200
    shown = client.get("/v1/models/iris")
    assert shown.status_code == 200
    assert shown.json["aliases"] == {"production": 1}
    assert "deployment refused" in shown.json["problems"]["deployment.json"]
    assert client.get("/v1/models").status_code == 200
    promoted = client.post("/v1/admin/models/iris/promote", json={"version": 1}, headers=AUTH)
    assert promoted.status_code == 503
    assert promoted.json["error"]["code"] == "deployment_damaged"


def test_fresh_worker_with_nothing_to_fall_back_to_is_not_ready(
    store: ModelStore, iris_artifact: Path, make_app: Callable[..., Flask]
) -> None:
    store.register("iris", iris_artifact, actor="t")  # never promoted: no history to replay
    damage_deployment(store, "iris")
    client = make_app().test_client()
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert "not valid JSON" in ready.json["waiting"]["iris:deployment.json"]
    predicted = client.post("/v1/models/iris/predict", json=ROW)
    assert predicted.status_code == 503
    assert predicted.json["error"]["code"] == "model_unavailable"
    shown = client.get("/v1/models/iris")
    assert shown.status_code == 503
    assert shown.json["error"]["code"] == "deployment_damaged"
    assert "Traceback" not in shown.get_data(as_text=True)


def test_dashboard_data_answers_with_the_damaged_model_flagged(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    damage_deployment(served, "iris")
    client = make_app().test_client()
    data = client.get("/v1/dashboard/data")
    assert data.status_code == 200
    iris = next(m for m in data.json["models"] if m["name"] == "iris")
    assert iris["aliases"] == {} and "not valid JSON" in iris["problem"]
    diabetes = next(m for m in data.json["models"] if m["name"] == "diabetes")
    assert diabetes["aliases"] == {"production": 1}
