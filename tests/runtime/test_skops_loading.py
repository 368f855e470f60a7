"""Loading stored versions safely: skops with exactly the recorded trusted types, after the
sha256 check; SERVING_ALLOW_PICKLE=false refusing joblib versions and nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from serving.runtime.artifacts import ModelLoadError, load_version
from serving.store.artifact_policy import ArtifactPolicy
from serving.store.model_store import ModelStore
from tests.conftest import FOREST_TYPES, IRIS_ROW


@pytest.fixture
def forest(store: ModelStore, forest_skops: Path) -> Path:
    """The version folder of a registered skops forest (its Tree type accepted)."""
    store.register(
        "forest", forest_skops, policy=ArtifactPolicy(trusted_types=frozenset({FOREST_TYPES}))
    )
    return store.version_dir("forest", 1)


def _load(folder: Path, allow_pickle: bool | None = None) -> object:
    metadata = json.loads((folder / "metadata.json").read_text())
    return load_version(folder, metadata, allow_mismatch=False, allow_pickle=allow_pickle)


def test_a_skops_version_loads_with_its_recorded_types_and_predicts(forest: Path) -> None:
    model = _load(forest, allow_pickle=False)
    rows = pd.DataFrame([IRIS_ROW], columns=load_iris().feature_names)
    assert list(model.predict(rows)) == ["setosa"]  # type: ignore[attr-defined]


def test_a_tampered_skops_artifact_is_refused_by_its_sha256(forest: Path) -> None:
    artifact = forest / "model.skops"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        _load(forest)


def test_a_type_missing_from_the_recorded_list_is_refused_at_load(forest: Path) -> None:
    path = forest / "metadata.json"
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "trusted_types": []}))  # the artifact is untouched
    with pytest.raises(
        ModelLoadError, match=re.escape(f"not in its recorded trusted_types: {FOREST_TYPES}")
    ):
        _load(forest)


def test_a_skops_version_without_a_trusted_types_list_is_refused(forest: Path) -> None:
    path = forest / "metadata.json"
    metadata = json.loads(path.read_text())
    del metadata["trusted_types"]
    path.write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="without a trusted_types list"):
        _load(forest)


def test_a_skops_version_is_checked_for_its_scikit_learn_version_too(forest: Path) -> None:
    path = forest / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "sklearn_version": "0.1"}))
    with pytest.raises(ModelLoadError, match=re.escape("trained with scikit-learn 0.1")):
        _load(forest)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_joblib_version_is_refused_when_pickle_is_not_allowed(
    store: ModelStore, iris_artifact: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    store.register("iris", iris_artifact)
    if how == "environment":
        monkeypatch.setenv("SERVING_ALLOW_PICKLE", "false")
    with pytest.raises(ModelLoadError, match="pickle refused: SERVING_ALLOW_PICKLE=false"):
        _load(store.version_dir("iris", 1), allow_pickle=False if how == "argument" else None)


def test_an_unknown_artifact_format_is_refused(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact)
    path = store.version_dir("iris", 1) / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "pickle5"}))
    with pytest.raises(ModelLoadError, match="unknown artifact format 'pickle5'"):
        _load(store.version_dir("iris", 1))
