"""The loader: follows deployment.json, loads before it swaps, keeps the last good version."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from serving.errors import ModelNotFound, ModelUnavailable
from serving.runtime.loader import ModelLoader
from serving.store.model_store import ModelStore
from serving.telemetry.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingMetrics(Metrics):
    def __init__(self) -> None:
        self.swaps: list[tuple[str, bool]] = []
        self.gauges: list[tuple[str, str, int]] = []

    def swap(self, model: str, ok: bool) -> None:
        self.swaps.append((model, ok))

    def serving_version(self, model: str, alias: str, version: int) -> None:
        self.gauges.append((model, alias, version))


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loader(store: ModelStore, metrics: RecordingMetrics, clock: FakeClock) -> ModelLoader:
    return ModelLoader(store, metrics, poll_interval=1.0, clock=clock)


def _two_versions(store: ModelStore, v1: Path, v2: Path) -> None:
    store.register("iris", v1, activate=True, actor="t")
    store.register("iris", v2, actor="t")


def test_loads_deployed_versions_on_refresh(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path, metrics: RecordingMetrics
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    loader.refresh()
    assert loader.resolve("iris").version == 1
    assert metrics.swaps == [("iris", True)]
    assert metrics.gauges == [("iris", "production", 1)]
    assert loader.ready() == (True, {})


def test_promote_is_picked_up_and_old_version_dropped(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    _two_versions(store, iris_artifact, iris_artifact_v2)
    loader.refresh()
    before = loader.resolve("iris")
    store.promote("iris", 2, actor="t")
    loader.refresh()
    after = loader.resolve("iris")
    assert (before.version, after.version) == (1, 2)
    assert before.model is not after.model
    assert [m.version for m in loader.states()["iris"].serving.values()] == [2]


def test_unchanged_deployment_is_not_reloaded(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path, metrics: RecordingMetrics
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    loader.refresh()
    first = loader.resolve("iris")
    for _ in range(5):
        loader.refresh()
    assert loader.resolve("iris") is first
    assert len(metrics.swaps) == 1


def test_maybe_refresh_waits_for_the_poll_interval(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path, clock: FakeClock
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    assert loader.maybe_refresh() is True
    clock.now += 0.5
    assert loader.maybe_refresh() is False
    clock.now += 0.6
    assert loader.maybe_refresh() is True


@pytest.mark.local_store
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: (folder / "model.joblib").write_bytes(b"corrupt"), "sha256 mismatch"),
        (lambda folder: (folder / "model.joblib").unlink(), "missing"),
        (lambda folder: _rewrite_meta(folder, sklearn_version="0.24.2"), "scikit-learn 0.24.2"),
        (lambda folder: _rewrite_meta(folder, sha256="0" * 64), "sha256 mismatch"),
    ],
    ids=["corrupt-bytes", "missing-file", "other-sklearn", "wrong-recorded-sha"],
)
def test_bad_new_version_never_replaces_the_serving_one(
    store: ModelStore,
    loader: ModelLoader,
    iris_artifact: Path,
    iris_artifact_v2: Path,
    metrics: RecordingMetrics,
    caplog: pytest.LogCaptureFixture,
    damage: object,
    reason: str,
) -> None:
    _two_versions(store, iris_artifact, iris_artifact_v2)
    loader.refresh()
    damage(store.version_dir("iris", 2))  # type: ignore[operator]
    store.promote("iris", 2, actor="t")
    with caplog.at_level(logging.ERROR, logger="serving.runtime.loader"):
        loader.refresh()
    assert loader.resolve("iris").version == 1
    problem = loader.states()["iris"].problems["production"]
    assert reason in problem and "still serving version 1" in problem
    assert ("iris", False) in metrics.swaps
    assert any(reason in r.getMessage() for r in caplog.records)


def _rewrite_meta(folder: Path, **changes: object) -> None:
    import json

    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.local_store
def test_failed_version_is_not_retried_until_its_files_change(
    store: ModelStore,
    loader: ModelLoader,
    iris_artifact: Path,
    iris_artifact_v2: Path,
    metrics: RecordingMetrics,
) -> None:
    _two_versions(store, iris_artifact, iris_artifact_v2)
    store.register("iris", iris_artifact, actor="t")  # version 3
    artifact = store.version_dir("iris", 2) / "model.joblib"
    good = artifact.read_bytes()
    artifact.write_bytes(b"corrupt")
    store.promote("iris", 2, actor="t")
    loader.refresh()
    store.promote("iris", 2, alias="staging", actor="t")  # deployment changes, v2 still bad
    loader.refresh()
    assert metrics.swaps.count(("iris", False)) == 1  # remembered, not retried
    artifact.write_bytes(good)  # repaired: its files changed, so it is tried again
    store.promote("iris", 2, alias="canary", actor="t")
    loader.refresh()
    assert loader.resolve("iris").version == 2


def test_alias_with_nothing_to_fall_back_to_is_unavailable_and_not_ready(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    (store.version_dir("iris", 1) / "model.joblib").write_bytes(b"x")
    loader.refresh()
    with pytest.raises(ModelUnavailable, match="sha256"):
        loader.resolve("iris")
    ready, waiting = loader.ready()
    assert not ready and "iris:production" in waiting


def test_unknown_model_and_alias(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    loader.refresh()
    with pytest.raises(ModelNotFound):
        loader.resolve("nope")
    with pytest.raises(ModelNotFound, match="no alias"):
        loader.resolve("iris", "staging")


def test_registered_but_never_deployed_model_does_not_block_readiness(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path
) -> None:
    store.register("iris", iris_artifact, actor="t")
    loader.refresh()
    assert loader.ready() == (True, {})


@pytest.mark.local_store
def test_removed_model_disappears(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path
) -> None:
    import shutil

    store.register("iris", iris_artifact, activate=True, actor="t")
    loader.refresh()
    shutil.rmtree(store.model_dir("iris"))
    loader.refresh()
    with pytest.raises(ModelNotFound):
        loader.resolve("iris")


def test_pinned_versions_are_cached_in_a_bounded_lru(
    store: ModelStore, metrics: RecordingMetrics, clock: FakeClock, iris_artifact: Path
) -> None:
    for _ in range(4):
        store.register("iris", iris_artifact, actor="t")
    store.promote("iris", 4, actor="t")
    loader = ModelLoader(store, metrics, pinned_cache_size=2, clock=clock)
    loader.refresh()
    assert loader.get_version("iris", 4) is loader.resolve("iris")
    first = loader.get_version("iris", 1)
    assert loader.get_version("iris", 1) is first
    loader.get_version("iris", 2)
    loader.get_version("iris", 3)  # evicts 1
    assert loader.get_version("iris", 1) is not first


def test_poll_thread_picks_up_a_promote_without_requests(
    store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    import time

    _two_versions(store, iris_artifact, iris_artifact_v2)
    loader = ModelLoader(store, Metrics(), poll_interval=0.05)
    loader.refresh()
    loader.ensure_polling()
    try:
        store.promote("iris", 2, actor="t")
        deadline = time.monotonic() + 5
        while loader.resolve("iris").version != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loader.resolve("iris").version == 2
    finally:
        loader.stop_polling()


def test_numeric_frame_models_are_fed_arrays_when_equivalent(
    store: ModelStore, loader: ModelLoader, iris_artifact: Path, mixed_artifact: tuple[Path, Path]
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("churn", mixed_artifact[0], mixed_artifact[1], activate=True, actor="t")
    loader.refresh()
    assert loader.resolve("iris").schema.frame is False  # numeric Pipeline: array is the same
    assert loader.resolve("churn").schema.frame is True  # selects columns by name: keeps frame


def test_array_input_can_be_turned_off(
    store: ModelStore, metrics: RecordingMetrics, iris_artifact: Path
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    loader = ModelLoader(store, metrics, array_input=False)
    loader.refresh()
    assert loader.resolve("iris").schema.frame is True


def test_fresh_worker_falls_back_to_the_last_good_version_from_history(
    store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path, metrics: RecordingMetrics
) -> None:
    _two_versions(store, iris_artifact, iris_artifact_v2)
    store.register("iris", iris_artifact, actor="t")  # v3
    store.promote("iris", 2, actor="t")
    (store.version_dir("iris", 3) / "model.joblib").write_bytes(b"corrupt")
    store.promote("iris", 3, actor="t")
    fresh = ModelLoader(store, metrics)  # like a worker gunicorn just (re)started
    fresh.refresh()
    assert fresh.resolve("iris").version == 2
    problem = fresh.states()["iris"].problems["production"]
    assert "sha256" in problem and "still serving version 2" in problem
    assert fresh.ready() == (True, {})


def test_rollback_swaps_back_to_the_version_still_in_memory(
    store: ModelStore,
    loader: ModelLoader,
    iris_artifact: Path,
    iris_artifact_v2: Path,
    metrics: RecordingMetrics,
) -> None:
    _two_versions(store, iris_artifact, iris_artifact_v2)
    loader.refresh()
    first = loader.resolve("iris")
    store.promote("iris", 2, actor="t")
    loader.refresh()
    second = loader.resolve("iris")
    store.rollback("iris", actor="t")
    loader.refresh()
    store.promote("iris", 2, actor="t")
    loader.refresh()
    # Two loads in all: the rollback and the promote back swapped references, no load each.
    assert metrics.swaps == [("iris", True), ("iris", True)]
    assert loader.resolve("iris") is second
    assert loader.get_version("iris", 1) is first


def test_no_pinned_cache_means_a_rollback_loads_again(
    store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path, metrics: RecordingMetrics
) -> None:
    loader = ModelLoader(store, metrics, poll_interval=1.0, pinned_cache_size=0)
    _two_versions(store, iris_artifact, iris_artifact_v2)
    loader.refresh()
    store.promote("iris", 2, actor="t")
    loader.refresh()
    store.rollback("iris", actor="t")
    loader.refresh()
    assert metrics.swaps == [("iris", True)] * 3
