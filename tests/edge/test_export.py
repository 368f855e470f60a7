"""`serving export NAME VERSION --edge DIR`: what a bundle holds, what its predict.py refuses
(changed files, rows the server refuses with the server's words), and what export refuses."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from serving.edge.bundle import ORT_WEB_VERSION, WEB_FILES
from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW
from tests.edge.conftest import export

IRIS_NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _module(bundle: Path) -> ModuleType:
    """The bundle's own predict.py, imported from the bundle (not from the serving package)."""
    spec = importlib.util.spec_from_file_location(
        f"edge_predict_{id(bundle)}", bundle / "predict.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _program(bundle: Path, stdin: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(bundle / "predict.py"), *flags, "-"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=bundle.parent,
    )


@pytest.fixture
def web_runtime(tmp_path: Path) -> Path:
    """Stand-ins for onnxruntime-web's files: export copies and hashes them, nothing runs them."""
    web = tmp_path / "web"
    web.mkdir()
    for name in WEB_FILES:
        (web / name).write_bytes(f"// {name}\n".encode())
    (web / "package.json").write_text(json.dumps({"version": ORT_WEB_VERSION}))
    return web


@pytest.fixture
def bundle(edge_store: ModelStore, tmp_path: Path) -> Path:
    directory = tmp_path / "iris-bundle"
    assert export(edge_store, "iris", 1, directory, "--no-web") == 0
    return directory


def test_export_writes_a_bundle_whose_manifest_covers_every_file(
    edge_store: ModelStore, web_runtime: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "out" / "iris"
    assert export(edge_store, "iris", 1, directory, "--web-runtime", str(web_runtime)) == 0
    assert capsys.readouterr().out.strip() == str(directory)
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    vendored = [f"vendor/{name}" for name in sorted(WEB_FILES)]
    assert files == sorted(
        ["index.html", "manifest.json", "model.onnx", "predict.py", "schema.json", *vendored]
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((directory / name).read_bytes()).hexdigest()
    source = edge_store.read_metadata("iris", 1)
    assert manifest["source"]["model"] == "iris" and manifest["source"]["version"] == 1
    assert manifest["source"]["sha256"] == source["sha256"]
    assert manifest["parity"]["ok"] and manifest["parity"]["label_mismatches"] == 0
    assert manifest["runtime"]["browser"] == {"onnxruntime-web": ORT_WEB_VERSION}
    schema = json.loads((directory / "schema.json").read_text())
    assert schema["task"] == "classifier" and schema["classes"] == source["classes"]
    assert [f["name"] for f in schema["features"]] == IRIS_NAMES
    assert {f["kind"] for f in schema["features"]} == {"numeric"}
    assert edge_store.versions("iris") == [1]  # compiled for the bundle, nothing registered


def test_an_onnx_version_is_bundled_as_stored(edge_store: ModelStore, tmp_path: Path) -> None:
    from serving.cli.main import main

    assert main(["--store", str(edge_store.root), "optimize", "iris", "1", "--onnx"]) == 0
    assert export(edge_store, "iris", 2, tmp_path / "b", "--no-web") == 0
    stored = (edge_store.version_dir("iris", 2) / "model.onnx").read_bytes()
    assert (tmp_path / "b" / "model.onnx").read_bytes() == stored
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["source"]["compiled_by"] == "stored ONNX version"
    assert manifest["source"]["compiled_from_version"] == 1
    assert manifest["parity"] == edge_store.read_metadata("iris", 2)["parity"]


def test_the_module_answers_and_the_program_prints_one_object_per_row(bundle: Path) -> None:
    loaded = _module(bundle).load(bundle)
    assert loaded.predict([IRIS_ROW]) == loaded.predict([dict(zip(IRIS_NAMES, IRIS_ROW))])
    assert loaded.predict([IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]) == ["setosa", "virginica"]
    (proba,) = loaded.predict_proba([IRIS_ROW])
    assert len(proba) == 3 and abs(sum(proba) - 1) < 1e-5 and proba[0] > 0.9
    jsonl = f"{json.dumps(IRIS_ROW)}\n{json.dumps(dict(zip(IRIS_NAMES, IRIS_ROW)))}\n"
    result = _program(bundle, jsonl, "--proba")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prediction"] for line in lines] == ["setosa", "setosa"]
    assert list(lines[0]["proba"]) == ["setosa", "versicolor", "virginica"]
    csv = ",".join(IRIS_NAMES) + "\n" + ",".join(map(str, IRIS_ROW)) + "\n"
    result = _program(bundle, csv)
    assert result.returncode == 0 and json.loads(result.stdout) == {"prediction": "setosa"}


BAD_ROWS = [
    ([1.0, 2.0], "count"),
    ([*IRIS_ROW, 1.0], "count-over"),
    ({**dict(zip(IRIS_NAMES, IRIS_ROW)), "colour": 1.0}, "unknown-name"),
    (dict(zip(IRIS_NAMES[:3], IRIS_ROW)), "missing-name"),
    ([5.1, "wide", 1.4, 0.2], "string"),
    ([5.1, None, 1.4, 0.2], "null"),
    ([5.1, True, 1.4, 0.2], "boolean"),
    ([5.1, 10**400, 1.4, 0.2], "huge-int"),
    ("5.1,3.5", "not-a-row"),
]
MIXED = [
    ([IRIS_ROW, dict(zip(IRIS_NAMES, IRIS_ROW))], "object-after-list"),
    ([dict(zip(IRIS_NAMES, IRIS_ROW)), IRIS_ROW], "list-after-object"),
]


@pytest.mark.parametrize(("batch", "why"), MIXED, ids=[why for _, why in MIXED])
def test_a_batch_mixing_lists_and_objects_is_refused_as_the_server_does(
    bundle: Path, server_answer: Callable[..., dict[str, Any]], batch: list[Any], why: str
) -> None:
    module = _module(bundle)
    with pytest.raises(module.InvalidRow) as refused:
        module.load(bundle).predict(batch)
    assert str(refused.value) == server_answer("iris", batch)["error"]["message"]


@pytest.mark.parametrize(("row", "why"), BAD_ROWS, ids=[why for _, why in BAD_ROWS])
def test_a_row_the_server_refuses_is_refused_with_the_servers_message(
    bundle: Path, server_answer: Callable[..., dict[str, Any]], row: Any, why: str
) -> None:
    good = dict(zip(IRIS_NAMES, IRIS_ROW)) if type(row) is dict else IRIS_ROW
    server = server_answer("iris", [good, row])
    module = _module(bundle)
    with pytest.raises(module.InvalidRow) as refused:
        module.load(bundle).predict([good, row])
    assert str(refused.value) == server["error"]["message"]
    result = _program(bundle, f"{json.dumps(good)}\n{json.dumps(row)}\n")
    assert result.returncode == 2
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first == {"prediction": "setosa"}
    assert second == {"error": server["error"]["message"]}


@pytest.mark.parametrize(
    "changed", ["model.onnx", "schema.json", "predict.py", "deleted:model.onnx"]
)
def test_a_tampered_bundle_is_refused_by_the_module_and_the_program(
    bundle: Path, changed: str
) -> None:
    module = _module(bundle)  # loaded before the change: the check is at load, not import
    name = changed.removeprefix("deleted:")
    path = bundle / name
    if changed.startswith("deleted:"):
        path.unlink()
    elif name == "model.onnx":  # one bit of the weights
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:  # an edit that leaves the file valid
        path.write_text(path.read_text() + "\n")
    with pytest.raises(module.BundleError, match=rf"^{name}: .*refused"):
        module.load(bundle)
    result = _program(bundle, json.dumps(IRIS_ROW) + "\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {name}: ") and "refused" in result.stderr


def test_export_refuses_a_model_with_categorical_features_and_writes_nothing(
    store: ModelStore,
    mixed_artifact: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, actor="test")
    assert export(store, "churn", 1, tmp_path / "churn", "--no-web") == 1
    assert "categorical features" in capsys.readouterr().err
    assert not (tmp_path / "churn").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".churn")] == []


def test_export_refuses_a_non_empty_directory_and_a_missing_web_runtime(
    edge_store: ModelStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert export(edge_store, "iris", 1, taken, "--no-web") == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    absent = tmp_path / "no-web"
    assert export(edge_store, "iris", 1, tmp_path / "b", "--web-runtime", str(absent)) == 1
    err = capsys.readouterr().err
    assert "onnxruntime-web not found" in err and "make edge-web" in err and "--no-web" in err
    assert not (tmp_path / "b").exists()
