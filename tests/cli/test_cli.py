"""The command line, run as a real subprocess: register, list, show, promote, rollback, demo."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    store: ModelStore, *args: str, limit_bytes: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # a real write failure: the kernel refuses to grow files past the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "serving", "--store", str(store.root), "--actor", "ci", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        preexec_fn=limit if limit_bytes is not None else None,
    )


def test_register_prints_version_and_activates(
    store: ModelStore, iris_artifact: Path, iris_reference: Path
) -> None:
    result = run_cli(
        store,
        "models",
        "register",
        "iris",
        str(iris_artifact),
        "--reference-data",
        str(iris_reference),
        "--activate",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert store.read_deployment("iris")["aliases"] == {"production": 1}
    assert store.history("iris")[-1]["actor"] == "ci"


def test_promote_rollback_list_and_show(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact, actor="t")
    promoted = run_cli(store, "models", "promote", "iris", "2")
    assert promoted.returncode == 0 and "1 -> 2" in promoted.stdout
    listed = run_cli(store, "models", "list")
    assert "iris" in listed.stdout and "production=2" in listed.stdout
    rolled = run_cli(store, "models", "rollback", "iris")
    assert rolled.returncode == 0 and "rolled back to 1" in rolled.stdout
    shown = run_cli(store, "models", "show", "iris")
    assert "alias production -> version 1: ok" in shown.stdout


def test_show_explains_why_an_alias_cannot_serve(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    (store.version_dir("iris", 1) / "model.joblib").write_bytes(b"tampered")
    shown = run_cli(store, "models", "show", "iris", "--json")
    assert shown.returncode == 0
    status = json.loads(shown.stdout)["alias_status"]["production"]
    assert status.startswith("cannot serve") and "sha256 mismatch" in status


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "promote", "iris", "9"), "no version 9"),
        (("models", "promote", "ghost", "1"), "not in the store"),
        (("models", "rollback", "iris"), "no earlier version"),
        (("models", "register", "bad/name", "x.joblib"), "invalid model name"),
        (("models", "register", "iris", "does-not-exist.joblib"), "no such file"),
    ],
    ids=[
        "unknown-version",
        "unknown-model",
        "nothing-to-roll-back",
        "bad-name",
        "missing-artifact",
    ],
)
def test_errors_are_one_line_and_exit_1(
    store: ModelStore, iris_artifact: Path, args: tuple[str, ...], message: str
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    result = run_cli(store, *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_full_disk_leaves_no_half_written_version(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    before = sorted(p.name for p in store.model_dir("iris").iterdir())
    # The artifact is a few KiB: a 1 KiB file-size limit makes the copy fail with EFBIG.
    result = run_cli(
        store, "models", "register", "iris", str(iris_artifact), "--activate", limit_bytes=1024
    )
    assert result.returncode == 1
    assert "could not write version 2" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in store.model_dir("iris").iterdir()) == before
    assert store.read_deployment("iris")["aliases"] == {"production": 1}


def test_demo_fills_an_empty_store_once(store: ModelStore) -> None:
    first = run_cli(store, "demo")
    assert first.returncode == 0, first.stderr
    assert store.list_models() == ["diabetes", "iris"]
    meta = store.read_metadata("iris", 1)
    assert meta["model_class"] == "sklearn.pipeline.Pipeline" and meta["metrics"]["accuracy"] > 0.8
    assert store.read_metadata("diabetes", 1)["task"] == "regressor"
    second = run_cli(store, "demo")
    assert second.returncode == 0 and "already has models" in second.stdout
    assert store.versions("iris") == [1]


def test_store_defaults_to_env_variable(tmp_path: Path, iris_artifact: Path) -> None:
    env = {**os.environ, "SERVING_MODEL_STORE": str(tmp_path / "env-store")}
    result = subprocess.run(
        [sys.executable, "-m", "serving", "models", "register", "iris", str(iris_artifact)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "env-store" / "iris" / "1" / "metadata.json").is_file()
