"""Registering safe artifacts: skops files with accepted types, --format skops conversion, and
SERVING_ALLOW_PICKLE=false refusing joblib files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris

from serving.errors import StoreError
from serving.store.artifact_policy import ArtifactPolicy
from serving.store.fsutil import sha256_file
from serving.store.model_store import ModelStore
from tests.conftest import FOREST_TYPES

TRUST_FOREST = ArtifactPolicy(trusted_types=frozenset({FOREST_TYPES}))


class Shifted(ClassifierMixin, BaseEstimator):
    """Predicts argmax of the rows plus a shift that pickle keeps (via __reduce__) and skops,
    which rebuilds from __getstate__, loses: the skops copy answers differently."""

    def fit(self, x: Any, y: Any) -> Shifted:
        self.classes_ = np.unique(y)
        self.n_features_in_ = np.asarray(x).shape[1]
        self.shift_ = 2
        return self

    def predict(self, x: Any) -> np.ndarray:
        return self.classes_[(np.asarray(x).argmax(axis=1) + self.shift_) % len(self.classes_)]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "shift_": 0}

    def __reduce__(self) -> Any:
        return (_rebuild, (dict(self.__dict__),))


def _rebuild(state: dict[str, Any]) -> Shifted:
    model = Shifted()
    model.__dict__.update(state)
    return model


class Tokens(ClassifierMixin, BaseEstimator):
    """Holds a compiled regular expression: pickle keeps it, skops cannot rebuild one."""

    def fit(self, x: Any, y: Any) -> Tokens:
        self.classes_, self.n_features_in_ = np.unique(y), np.asarray(x).shape[1]
        self.pattern_ = re.compile(r"\d+")
        return self

    def predict(self, x: Any) -> np.ndarray:
        return np.full(len(x), self.classes_[0])


def _dumped(model: Any, path: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    joblib.dump(model.fit(x, y), path)
    return path


def _metadata(store: ModelStore, name: str, version: int) -> dict[str, Any]:
    return json.loads((store.version_dir(name, version) / "metadata.json").read_text())


def test_a_skops_file_needing_trusted_types_is_refused_without_them_and_names_them(
    store: ModelStore, forest_skops: Path
) -> None:
    with pytest.raises(StoreError, match=re.escape(f"--trusted-types {FOREST_TYPES}")):
        store.register("forest", forest_skops, policy=ArtifactPolicy())
    assert not store.exists("forest")  # nothing written, not even the model's folder


def test_accepted_trusted_types_are_recorded_with_the_skops_artifact(
    store: ModelStore, forest_skops: Path
) -> None:
    version = store.register("forest", forest_skops, policy=TRUST_FOREST)
    meta = _metadata(store, "forest", version)
    assert (meta["format"], meta["artifact"], meta["trusted_types"]) == (
        "skops",
        "model.skops",
        [FOREST_TYPES],
    )
    stored = store.version_dir("forest", version) / "model.skops"
    assert meta["sha256"] == sha256_file(stored) == sha256_file(forest_skops)


def test_only_the_types_the_file_needs_are_recorded_not_the_whole_allow_list(
    store: ModelStore, iris_skops: Path
) -> None:
    policy = ArtifactPolicy(trusted_types=frozenset({FOREST_TYPES, "builtins.eval"}))
    version = store.register("iris", iris_skops, policy=policy)
    assert _metadata(store, "iris", version)["trusted_types"] == []


def test_format_skops_converts_a_joblib_forest_with_identical_predictions(
    store: ModelStore, forest_artifact: Path, iris_reference: Path
) -> None:
    policy = ArtifactPolicy(to_skops=True, trusted_types=frozenset({FOREST_TYPES}))
    version = store.register("forest", forest_artifact, iris_reference, policy=policy)
    meta = _metadata(store, "forest", version)
    assert meta["format"] == "skops" and meta["converted_from"] == "forest.joblib"
    stored = store.version_dir("forest", version) / "model.skops"
    copy = skops.io.load(stored, trusted=[FOREST_TYPES])
    rows = load_iris(as_frame=True).data
    original = joblib.load(forest_artifact)
    assert np.array_equal(copy.predict_proba(rows), original.predict_proba(rows))


def test_format_skops_still_asks_for_the_types_the_converted_file_needs(
    store: ModelStore, forest_artifact: Path
) -> None:
    with pytest.raises(StoreError, match=FOREST_TYPES):
        store.register("forest", forest_artifact, policy=ArtifactPolicy(to_skops=True))
    assert not store.exists("forest")


def test_format_skops_refuses_a_model_whose_skops_copy_answers_differently(
    store: ModelStore, tmp_path: Path
) -> None:
    artifact = _dumped(Shifted(), tmp_path / "shifted.joblib")
    with pytest.raises(StoreError, match="predict differs"):
        store.register("shifted", artifact, policy=ArtifactPolicy(to_skops=True))
    assert not store.exists("shifted")
    assert store.register("shifted", artifact) == 1  # as joblib it is fine


def test_format_skops_refuses_a_model_skops_cannot_hold(store: ModelStore, tmp_path: Path) -> None:
    artifact = _dumped(Tokens(), tmp_path / "tokens.joblib")
    with pytest.raises(StoreError, match="skops cannot hold this model"):
        store.register("tokens", artifact, policy=ArtifactPolicy(to_skops=True))
    assert not store.exists("tokens")


@pytest.mark.parametrize("how", ["policy", "environment"])
def test_a_joblib_file_is_refused_when_pickle_is_not_allowed(
    store: ModelStore, iris_artifact: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    policy = ArtifactPolicy(allow_pickle=False, to_skops=True) if how == "policy" else None
    if how == "environment":
        monkeypatch.setenv("SERVING_ALLOW_PICKLE", "false")
    with pytest.raises(StoreError, match="pickle refused: SERVING_ALLOW_PICKLE=false"):
        store.register("iris", iris_artifact, policy=policy)
    assert not store.exists("iris")


def test_a_skops_file_registers_when_pickle_is_not_allowed(
    store: ModelStore, forest_skops: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVING_ALLOW_PICKLE", "false")
    assert store.register("forest", forest_skops, policy=TRUST_FOREST) == 1


def test_a_file_that_is_not_skops_inside_is_refused_clearly(
    store: ModelStore, tmp_path: Path
) -> None:
    fake = tmp_path / "model.skops"
    fake.write_bytes(b"not a zip")
    with pytest.raises(StoreError, match="not a readable skops file"):
        store.register("fake", fake)
