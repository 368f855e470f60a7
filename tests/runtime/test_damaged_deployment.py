"""A damaged deployment.json never turns a served model into a 404: a worker keeps the last
good deployment from memory, a fresh one replays it from history, and readiness says so
when neither is possible (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ModelUnavailable
from serving.runtime.loader import ModelLoader
from serving.store.base import StoreBase
from tests.runtime.test_loader import RecordingMetrics
from tests.store_damage import damage_deployment


def _deployed(store: StoreBase, v1: Path, v2: Path) -> None:
    store.register("iris", v1, activate=True, actor="t")
    store.register("iris", v2, actor="t")
    store.promote("iris", 2, actor="t")
    store.promote("iris", 1, alias="staging", actor="t")


def test_running_worker_keeps_the_last_good_deployment_and_counts_the_refusal(
    store: StoreBase,
    iris_artifact: Path,
    iris_artifact_v2: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _deployed(store, iris_artifact, iris_artifact_v2)
    metrics = RecordingMetrics()
    loader = ModelLoader(store, metrics)
    loader.refresh()
    damage_deployment(store, "iris")
    caplog.clear()
    loader.refresh()
    loader.refresh()  # the same damage again: neither logged nor counted twice
    assert loader.resolve("iris").version == 2
    assert loader.resolve("iris", "staging").version == 1
    assert loader.ready() == (True, {})
    problem = loader.states()["iris"].problems["deployment.json"]
    assert "deployment refused" in problem and "serving the last good one" in problem
    assert metrics.swaps.count(("iris", False)) == 1
    refused = [r for r in caplog.records if getattr(r, "event", "") == "deployment_refused"]
    assert len(refused) == 1


def test_fresh_worker_serves_the_last_good_deployment_from_history(
    store: StoreBase, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    _deployed(store, iris_artifact, iris_artifact_v2)
    damage_deployment(store, "iris")
    fresh = ModelLoader(store, RecordingMetrics())  # a worker gunicorn just (re)started
    fresh.refresh()
    assert fresh.resolve("iris").version == 2
    assert fresh.resolve("iris", "staging").version == 1
    assert fresh.ready() == (True, {})
    assert "from history.jsonl" in fresh.states()["iris"].problems["deployment.json"]


def test_repaired_deployment_is_followed_again(
    store: StoreBase, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    _deployed(store, iris_artifact, iris_artifact_v2)
    loader = ModelLoader(store, RecordingMetrics())
    loader.refresh()
    damage_deployment(store, "iris")
    loader.refresh()
    damage_deployment(store, "iris", b'{"aliases": {"production": 1}}')
    loader.refresh()
    assert loader.resolve("iris").version == 1
    assert "deployment.json" not in loader.states()["iris"].problems


def test_worker_with_no_last_good_deployment_is_not_ready_and_says_why(
    store: StoreBase, iris_artifact: Path
) -> None:
    store.register("iris", iris_artifact, actor="t")  # no promote: history has no deployment
    damage_deployment(store, "iris")
    fresh = ModelLoader(store, RecordingMetrics())
    fresh.refresh()
    ok, waiting = fresh.ready()
    assert not ok
    assert "not valid JSON" in waiting["iris:deployment.json"]
    with pytest.raises(ModelUnavailable, match="cannot be resolved"):
        fresh.resolve("iris")
