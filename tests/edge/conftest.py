"""Fixtures for edge bundles: a store with iris and diabetes, `serving export` through the CLI,
the server's answers, and a fresh virtualenv holding only numpy and onnxruntime."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from sklearn.datasets import load_diabetes, load_iris

from serving.cli.main import main
from serving.store.model_store import ModelStore

REPO = Path(__file__).resolve().parents[2]


def pins(*names: str) -> list[str]:
    """`name==version` of each package, as requirements.txt pins it."""
    text = (REPO / "requirements.txt").read_text()
    found = []
    for name in names:
        match = re.search(rf"^{re.escape(name)}==(\S+)", text, re.MULTILINE)
        assert match, f"{name} is not pinned in requirements.txt"
        found.append(f"{name}=={match.group(1)}")
    return found


@pytest.fixture(scope="session")
def edge_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new virtualenv with only numpy and onnxruntime (and what onnxruntime
    pulls in), at requirements.txt's pins: made once per test session."""
    venv = tmp_path_factory.mktemp("edge-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    wanted = pins("numpy", "onnxruntime")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"pip could not install {' '.join(wanted)}: {result.stderr[-500:]}")
    return python


@pytest.fixture
def edge_store(
    store: ModelStore, iris_artifact: Path, iris_reference: Path, regressor_artifact: Path
) -> ModelStore:
    """iris (a scikit-learn Pipeline) and diabetes (Ridge), version 1 of each in production."""
    store.register("iris", iris_artifact, iris_reference, activate=True, actor="test")
    store.register("diabetes", regressor_artifact, activate=True, actor="test")
    return store


def export(store: ModelStore, name: str, version: int, directory: Path, *flags: str) -> int:
    argv = ["--store", str(store.root), "export", name, str(version), "--edge", str(directory)]
    return main([*argv, *flags])


def rows(name: str, n: int, seed: int = 0) -> list[list[float]]:
    """`n` rows near the training data of iris or diabetes: real rows plus noise."""
    data = load_iris().data if name == "iris" else load_diabetes().data
    rng = np.random.default_rng(seed)
    picked = data[rng.integers(0, len(data), n)]
    return (picked + rng.normal(0, 0.1, picked.shape) * data.std(axis=0)).round(4).tolist()


@pytest.fixture
def server_answer(make_app: Callable[..., Flask]) -> Callable[..., dict[str, Any]]:
    """The server's /v1 answer (or 422 error) for instances of a model's production version."""
    client = make_app(max_instances=10_000, max_body_bytes=8 << 20).test_client()

    def answer(name: str, instances: list[Any], proba: bool = False) -> dict[str, Any]:
        body = {"instances": instances, "return_proba": proba}
        response = client.post(f"/v1/models/{name}/predict", json=body)
        assert response.status_code in (200, 422), response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    return answer
