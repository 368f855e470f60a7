"""The file store: immutable versions, atomic deployment, history, locking, crash safety."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from serving.errors import ModelNotFound, StoreError, VersionNotFound
from serving.store.model_store import ModelStore


def test_register_writes_version_folder_with_metadata(
    store: ModelStore, iris_artifact: Path, iris_reference: Path
) -> None:
    version = store.register("iris", iris_artifact, iris_reference, actor="alice")
    assert version == 1
    folder = store.version_dir("iris", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.joblib"]
    meta = store.read_metadata("iris", 1)
    assert meta["task"] == "classifier"
    assert meta["classes"] == ["setosa", "versicolor", "virginica"]
    assert meta["n_features"] == 4 and meta["feature_names"][0] == "sepal length (cm)"
    assert len(meta["sha256"]) == 64 and meta["sklearn_version"] and meta["python_version"]
    assert meta["created_by"] == "alice" and meta["created_at"].endswith("+00:00")
    assert meta["reference"]["rows"] == 150
    assert len(meta["sample_input"][0]) == 4


def test_register_without_activate_deploys_nothing(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, actor="t")
    assert store.read_deployment("iris")["aliases"] == {}


def test_versions_count_up_and_activate_moves_production(
    store: ModelStore, iris_artifact: Path
) -> None:
    assert store.register("iris", iris_artifact, activate=True, actor="t") == 1
    assert store.register("iris", iris_artifact, activate=True, actor="t") == 2
    assert store.versions("iris") == [1, 2]
    assert store.read_deployment("iris")["aliases"] == {"production": 2}


def test_promote_and_rollback_walk_history(store: ModelStore, iris_artifact: Path) -> None:
    for _ in range(3):
        store.register("iris", iris_artifact, actor="t")
    store.promote("iris", 1, actor="t")
    store.promote("iris", 2, actor="t")
    store.promote("iris", 3, actor="t")
    assert store.rollback("iris", actor="t") == 2
    assert store.rollback("iris", actor="t") == 1
    assert store.read_deployment("iris")["aliases"]["production"] == 1
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("iris", actor="t")
    actions = [e["action"] for e in store.history("iris")]
    assert actions.count("rollback") == 2 and actions.count("register") == 3


def test_promote_other_alias_leaves_production(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact, actor="t")
    assert store.promote("iris", 2, alias="staging", actor="t") is None
    assert store.read_deployment("iris")["aliases"] == {"production": 1, "staging": 2}


@pytest.mark.parametrize(
    "name",
    ["", "../etc", "a/b", ".hidden", "x" * 65, "sp ace", "-dash"],
    ids=["empty", "traversal", "slash", "dot-start", "too-long", "space", "dash-start"],
)
def test_bad_names_are_refused(store: ModelStore, iris_artifact: Path, name: str) -> None:
    with pytest.raises(StoreError, match="invalid model name"):
        store.register(name, iris_artifact, actor="t")


def test_unknown_model_and_version(store: ModelStore, iris_artifact: Path) -> None:
    with pytest.raises(ModelNotFound):
        store.versions("nope")
    store.register("iris", iris_artifact, actor="t")
    with pytest.raises(VersionNotFound):
        store.promote("iris", 7, actor="t")


def test_not_a_model_is_refused_and_leaves_nothing(store: ModelStore, tmp_path: Path) -> None:
    import joblib

    bogus = tmp_path / "bogus.joblib"
    joblib.dump({"not": "a model"}, bogus)
    with pytest.raises(StoreError, match="no predict method"):
        store.register("bogus", bogus, actor="t")
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"\x00 not a pickle")
    with pytest.raises(StoreError, match="cannot be loaded"):
        store.register("bogus", garbage, actor="t")
    with pytest.raises(StoreError, match="unsupported artifact type"):
        store.register("bogus", tmp_path / "model.onnx", actor="t")
    assert not store.exists("bogus")


def test_reference_data_missing_a_feature_is_refused(
    store: ModelStore, iris_artifact: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "ref.csv"
    csv.write_text("sepal length (cm),sepal width (cm)\n1,2\n")
    with pytest.raises(StoreError, match="lacks feature columns"):
        store.register("iris", iris_artifact, csv, actor="t")


def test_concurrent_registrations_get_distinct_versions(
    store: ModelStore, iris_artifact: Path
) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            results.append(store.register("iris", iris_artifact, actor="t"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert store.versions("iris") == [1, 2, 3, 4, 5, 6]


@pytest.mark.local_store
def test_deployment_file_is_replaced_whole(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    before = os.stat(store.deployment_path("iris")).st_ino
    store.register("iris", iris_artifact, activate=True, actor="t")
    after = os.stat(store.deployment_path("iris"))
    assert after.st_ino != before  # a new file renamed over the old one, not rewritten in place
    assert json.loads(store.deployment_path("iris").read_bytes())["revision"] == 2
    leftovers = [p.name for p in store.model_dir("iris").iterdir() if ".tmp" in p.name]
    assert leftovers == []


@pytest.mark.local_store
def test_torn_last_history_line_is_skipped(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    with open(store.model_dir("iris") / "history.jsonl", "ab") as handle:
        handle.write(b'{"at": "2026-01-01", "act')
    assert [e["action"] for e in store.history("iris")] == ["register", "promote"]
