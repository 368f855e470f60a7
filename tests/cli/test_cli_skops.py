"""`models register` of safe artifacts and `models show` under SERVING_ALLOW_PICKLE=false,
run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serving.store.model_store import ModelStore
from tests.conftest import FOREST_TYPES

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    store: ModelStore, *args: str, allow_pickle: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVING_")}
    env["SERVING_ALLOW_PICKLE"] = "true" if allow_pickle else "false"
    return subprocess.run(
        [sys.executable, "-m", "serving", "--store", str(store.root), "--actor", "ci", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def test_register_lists_untrusted_types_and_accepts_them_from_the_flag(
    store: ModelStore, forest_skops: Path
) -> None:
    refused = run_cli(store, "models", "register", "forest", str(forest_skops))
    assert refused.returncode == 1 and FOREST_TYPES in refused.stderr
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    accepted = run_cli(
        store, "models", "register", "forest", str(forest_skops), "--trusted-types", FOREST_TYPES
    )
    assert accepted.returncode == 0, accepted.stderr
    assert store.read_metadata("forest", 1)["trusted_types"] == [FOREST_TYPES]


def test_register_reads_a_reviewed_trusted_types_file(
    store: ModelStore, forest_skops: Path, tmp_path: Path
) -> None:
    allow_list = tmp_path / "trusted-types.txt"
    allow_list.write_text(f"# reviewed for the forests\n\n{FOREST_TYPES}  # tree storage\n")
    args = ("models", "register", "forest", str(forest_skops))
    result = run_cli(store, *args, "--trusted-types-file", str(allow_list), allow_pickle=False)
    assert result.returncode == 0, result.stderr
    assert store.read_metadata("forest", 1)["trusted_types"] == [FOREST_TYPES]


def test_format_skops_converts_a_joblib_file(store: ModelStore, forest_artifact: Path) -> None:
    args = ("models", "register", "forest", str(forest_artifact), "--format", "skops")
    result = run_cli(store, *args, "--trusted-types", FOREST_TYPES, "--activate")
    assert result.returncode == 0, result.stderr
    folder = store.version_dir("forest", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.skops"]


def test_register_of_a_joblib_file_is_refused_without_pickle(
    store: ModelStore, iris_artifact: Path
) -> None:
    for extra in ((), ("--format", "skops")):  # converting would unpickle it too
        args = ("models", "register", "iris", str(iris_artifact), *extra)
        result = run_cli(store, *args, allow_pickle=False)
        assert result.returncode == 1
        assert "pickle refused: SERVING_ALLOW_PICKLE=false" in result.stderr
    assert not store.exists("iris")


def test_show_reports_a_joblib_alias_as_refused_and_a_skops_one_as_ok(
    store: ModelStore, iris_artifact: Path, iris_skops: Path
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_skops, actor="t")
    store.promote("iris", 2, alias="safe", actor="t")
    result = run_cli(store, "models", "show", "iris", "--json", allow_pickle=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["alias_status"]["safe"] == "ok"
    assert report["alias_status"]["production"].startswith(
        "cannot serve: pickle refused: SERVING_ALLOW_PICKLE=false"
    )
    assert [v["format"] for v in report["versions"]] == [None, "skops"]
