"""A/B routing: weights, stickiness, validation, shadow isolation, and rollback ending a split."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from serving.errors import StoreError
from serving.rollouts.routing import Route
from serving.runtime.loader import ModelLoader
from serving.store.deployment import parse_weights
from serving.store.model_store import ModelStore
from serving.telemetry.metrics import Metrics
from tests.conftest import IRIS_ROW


@pytest.fixture
def two(store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path) -> ModelStore:
    """iris v1 in production, v2 registered: no split, so v2 only ever serves as a shadow."""
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    return store


@pytest.fixture
def split(store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path) -> ModelStore:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    store.route("iris", {1: 90, 2: 10}, sticky=True, actor="t")
    return store


def test_ten_thousand_keys_split_within_two_percent() -> None:
    route = Route.from_doc(
        {
            "variants": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}],
            "sticky": True,
            "experiment": "e1",
        }
    )
    assert route is not None
    counts = Counter(route.choose(f"user-{i}") for i in range(10_000))
    assert abs(counts[4] / 10_000 - 0.10) < 0.02
    assert abs(counts[3] / 10_000 - 0.90) < 0.02


def test_same_key_always_gets_the_same_variant() -> None:
    doc = {
        "variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        "sticky": True,
        "experiment": "e",
    }
    first, second = Route.from_doc(doc), Route.from_doc(dict(doc))  # e.g. two workers
    assert first is not None and second is not None
    for i in range(500):
        assert first.choose(f"k{i}") == second.choose(f"k{i}") == first.choose(f"k{i}")


def test_random_split_without_key_follows_weights() -> None:
    route = Route.from_doc({"variants": [{"version": 1, "weight": 3}, {"version": 2, "weight": 1}]})
    assert route is not None
    counts = Counter(route.choose(None) for _ in range(20_000))
    assert abs(counts[2] / 20_000 - 0.25) < 0.02


def test_ramping_weights_keeps_the_experiment_and_moves_few_users(
    split: ModelStore,
) -> None:
    before = Route.from_doc(split.read_deployment("iris")["routes"]["production"])
    split.route("iris", {1: 80, 2: 20}, sticky=True, actor="t")
    after = Route.from_doc(split.read_deployment("iris")["routes"]["production"])
    assert before is not None and after is not None and before.experiment == after.experiment
    keys = [f"u{i}" for i in range(5_000)]
    moved = [k for k in keys if before.choose(k) != after.choose(k)]
    assert all(before.choose(k) == 1 and after.choose(k) == 2 for k in moved)
    assert abs(len(moved) / 5_000 - 0.10) < 0.02


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({1: -5, 2: 10}, ">= 0"),
        ({1: 0, 2: 0}, "all be zero"),
        ({1: 50, 9: 50}, "does not exist"),
        ({}, "at least one"),
        ({1: float("nan")}, ">= 0"),
    ],
    ids=["negative", "all-zero", "unknown-version", "empty", "nan"],
)
def test_bad_weights_are_refused_and_change_nothing(
    split: ModelStore, weights: dict[int, float], message: str
) -> None:
    before = split.read_deployment("iris")
    with pytest.raises(StoreError, match=message):
        split.route("iris", weights, actor="t")
    assert split.read_deployment("iris") == before


def test_parse_weights_cli_form() -> None:
    assert parse_weights(["3=90", "4=10"]) == {3: 90.0, 4: 10.0}
    with pytest.raises(StoreError, match="VERSION=WEIGHT"):
        parse_weights(["three=90"])


def test_api_names_variant_and_sticks_to_routing_key(
    split: ModelStore, make_app: Callable[..., Flask]
) -> None:
    client = make_app().test_client()
    seen: dict[str, set[str]] = {}
    for i in range(200):
        key = f"user-{i % 20}"
        response = client.post(
            "/v1/models/iris/predict",
            json={"instances": [IRIS_ROW]},
            headers={"X-Routing-Key": key},
        )
        body = response.get_json()
        assert response.headers["X-Model-Variant"] == body["variant"] == f"v{body['version']}"
        seen.setdefault(key, set()).add(body["variant"])
    assert all(len(variants) == 1 for variants in seen.values())
    via_body = client.post(
        "/v1/models/iris/predict", json={"instances": [IRIS_ROW], "routing_key": "user-3"}
    ).get_json()
    assert {via_body["variant"]} == seen["user-3"]


def test_named_alias_predicts_through_its_version(
    split: ModelStore, make_app: Callable[..., Flask]
) -> None:
    split.promote("iris", 2, alias="staging", actor="t")
    client = make_app().test_client()
    response = client.post(
        "/v1/models/iris/aliases/staging/predict", json={"instances": [IRIS_ROW]}
    )
    assert response.status_code == 200 and response.headers["X-Model-Version"] == "2"
    missing = client.post("/v1/models/iris/aliases/nope/predict", json={"instances": [IRIS_ROW]})
    assert missing.status_code == 404


def test_rollback_ends_the_split(split: ModelStore) -> None:
    split.promote("iris", 2, actor="t")
    assert "production" not in split.read_deployment("iris").get("routes", {})
    assert split.rollback("iris", actor="t") == 1


def test_failed_variant_gets_no_traffic(
    store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    (store.version_dir("iris", 2) / "model.joblib").write_bytes(b"bad")
    store.route("iris", {1: 50, 2: 50}, actor="t")
    loader = ModelLoader(store, Metrics())
    loader.refresh()
    assert {loader.choose("iris").loaded.version for _ in range(50)} == {1}
    assert "sha256" in loader.states()["iris"].problems["production/v2"]


class _Exploding:
    def predict(self, x: object) -> object:
        raise RuntimeError("shadow blew up")


def test_shadow_failure_or_slowness_does_not_touch_the_primary_answer(
    two: ModelStore, make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    two.shadow("iris", 2, actor="t")
    app = make_app()
    client = app.test_client()
    plain = client.post(
        "/v1/models/iris/predict", json={"instances": [IRIS_ROW]}, headers={"X-Routing-Key": "a"}
    ).get_json()
    state = app.extensions["serving"]
    shadow = state.loader.choose("iris").shadow
    assert shadow is not None and shadow.version == 2
    object.__setattr__(shadow, "runner", _Exploding())  # a shadow that raises
    with caplog.at_level("WARNING", logger="serving.shadow"):
        response = client.post(
            "/v1/models/iris/predict",
            json={"instances": [IRIS_ROW]},
            headers={"X-Routing-Key": "a"},
        )
        body = response.get_json()
        response.close()  # what gunicorn does after sending: runs the shadow
    assert body["predictions"] == plain["predictions"] and response.status_code == 200
    assert any("shadow blew up" in r.getMessage() for r in caplog.records)


def test_shadow_agreement_is_logged(
    split: ModelStore, make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    split.shadow("iris", 1, actor="t")
    client = make_app().test_client()
    with caplog.at_level("INFO", logger="serving.shadow"):
        response = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
        response.close()
    record = next(r for r in caplog.records if r.getMessage() == "shadow")
    assert record.agreement in (0.0, 1.0) and record.version == 1  # type: ignore[attr-defined]


def test_slow_shadow_runs_after_the_response_is_built(
    two: ModelStore, make_app: Callable[..., Flask]
) -> None:
    two.shadow("iris", 2, actor="t")
    app = make_app()
    state = app.extensions["serving"]
    shadow = state.loader.choose("iris").shadow

    class Slow:
        def predict(self, x: object) -> object:
            time.sleep(1.0)
            raise RuntimeError("late")

    object.__setattr__(shadow, "runner", Slow())
    client = app.test_client()
    started = time.perf_counter()
    response = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
    answered = time.perf_counter() - started
    response.close()
    closed = time.perf_counter() - started
    # The answer does not wait for the 1 s shadow (margin for a loaded shared machine).
    assert response.status_code == 200 and answered < 0.6
    assert closed >= 1.0  # the slow shadow did run, after the answer
