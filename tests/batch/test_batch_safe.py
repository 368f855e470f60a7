"""`serving batch` with SERVING_ALLOW_PICKLE=false: a joblib version is a one-line error, a
skops version scores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from serving.cli.main import main
from serving.store.artifact_policy import ArtifactPolicy
from serving.store.model_store import ModelStore
from tests.conftest import FOREST_TYPES


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    load_iris(as_frame=True).data.head(20).to_csv(path, index=False)
    return path


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_ALLOW_PICKLE", "false")


def test_batch_refuses_a_joblib_version_in_one_line(
    store: ModelStore,
    iris_artifact: Path,
    rows: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with monkeypatch.context() as allowed:  # registered while pickle was allowed
        allowed.setenv("SERVING_ALLOW_PICKLE", "true")
        store.register("iris", iris_artifact, activate=True, actor="test")
    output = tmp_path / "out.csv"
    code = main(["--store", str(store.root), "batch", "iris", str(rows), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 1 and not output.exists()
    assert err.count("\n") == 1 and "pickle refused: SERVING_ALLOW_PICKLE=false" in err


def test_batch_scores_with_a_skops_version(
    store: ModelStore, forest_skops: Path, rows: Path, tmp_path: Path
) -> None:
    policy = ArtifactPolicy(trusted_types=frozenset({FOREST_TYPES}))
    store.register("forest", forest_skops, activate=True, actor="test", policy=policy)
    output = tmp_path / "out.csv"
    assert main(["--store", str(store.root), "batch", "forest", str(rows), "-o", str(output)]) == 0
    assert len(pd.read_csv(output)) == 20
