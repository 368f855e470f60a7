"""Write an edge bundle of a version: model.onnx, schema.json, manifest.json, predict.py and,
with the vendored onnxruntime-web, index.html (docs/edge.md).

A scikit-learn version is compiled first (`serving.compile.onnx.compile_version`: the parity gate
of `optimize --onnx`), without registering anything; an ONNX version is copied as stored, after
its sha256 is checked. The bundle is written beside DIR and renamed into place, so DIR is either
absent or complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.errors import StoreError
from serving.features.schema import InputSchema

HERE = Path(__file__).resolve().parent
# onnxruntime-web, pinned: `make edge-web` puts these files of its npm package here.
ORT_WEB_VERSION = "1.30.0"
DEFAULT_WEB_DIR = HERE.parents[1] / ".edge-web" / "onnxruntime-web"
WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
FORMAT = "serving-edge-bundle/1"


def export(
    store: Any, name: str, version: int, directory: Path, web_dir: Path | None
) -> dict[str, Any]:
    """Write the bundle of `name` v`version` to `directory` (absent or empty); its manifest.

    `web_dir`: the onnxruntime-web files for index.html; None writes a bundle without the page.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise StoreError(f"{directory}: exists and is not an empty directory")
    if web_dir is not None:
        check_web_runtime(web_dir)
    onnx_bytes, metadata, source = _onnx_of(store, name, version)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would keep a static server's user out
    try:
        manifest = _write(staging, onnx_bytes, metadata, source, web_dir)
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def check_web_runtime(web_dir: Path) -> None:
    """Refuse a missing or other-version onnxruntime-web (`make edge-web` installs the pin)."""
    hint = "run `make edge-web`, pass --web-runtime DIR, or --no-web for a bundle without a page"
    missing = [f for f in (*WEB_FILES, "package.json") if not (web_dir / f).is_file()]
    if missing:
        raise StoreError(f"onnxruntime-web not found in {web_dir} ({missing[0]}): {hint}")
    found = json.loads((web_dir / "package.json").read_text("utf-8")).get("version")
    if found != ORT_WEB_VERSION:
        raise StoreError(f"{web_dir} holds onnxruntime-web {found}, not {ORT_WEB_VERSION}: {hint}")


def _onnx_of(store: Any, name: str, version: int) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """(ONNX bytes, the version's metadata, where they come from and their parity report)."""
    metadata = store.read_metadata(name, version)
    if metadata.get("format") == "onnx":
        from serving.runtime import artifacts  # the sha256 check and an ONNX Runtime load

        version_dir = store.version_dir(name, version)
        try:
            artifacts.load_version(version_dir, metadata, False)
        except artifacts.ModelLoadError as exc:
            raise StoreError(f"{name} v{version} cannot load: {exc.reason}") from None
        onnx_bytes = (version_dir / metadata["artifact"]).read_bytes()
        source = {"compiled_by": "stored ONNX version", "parity": metadata.get("parity")}
        return onnx_bytes, metadata, {**source, "from_version": metadata.get("source_version")}
    from serving.compile.onnx import compile_version  # skl2onnx: only when compiling

    onnx_bytes, report, _, metadata = compile_version(store, name, version)
    return onnx_bytes, metadata, {"compiled_by": "serving export (skl2onnx)", "parity": report}


def schema_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """schema.json: what predict.py and index.html validate rows against."""
    schema = InputSchema.from_metadata(metadata)
    return {
        "task": metadata.get("task"),
        "classes": metadata.get("classes"),
        "n_features": schema.n_features,
        "named": schema.names is not None,
        "features": schema.describe(),
        "output_dtype": metadata.get("output_dtype"),
    }


def _write(
    root: Path,
    onnx_bytes: bytes,
    metadata: dict[str, Any],
    source: dict[str, Any],
    web_dir: Path | None,
) -> dict[str, Any]:
    (root / "model.onnx").write_bytes(onnx_bytes)
    _write_json(root / "schema.json", schema_of(metadata))
    shutil.copyfile(HERE / "predict.py", root / "predict.py")
    if web_dir is not None:
        shutil.copyfile(HERE / "index.html", root / "index.html")
        (root / "vendor").mkdir()
        for name in WEB_FILES:
            shutil.copyfile(web_dir / name, root / "vendor" / name)
    manifest = _manifest(root, metadata, source, web_dir is not None)
    _write_json(root / "manifest.json", manifest)
    return manifest


def _manifest(
    root: Path, metadata: dict[str, Any], source: dict[str, Any], page: bool
) -> dict[str, Any]:
    import numpy
    import onnxruntime

    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        "format": FORMAT,
        "model": metadata.get("name"),
        "version": metadata.get("version"),
        "source": {
            "model": metadata.get("name"),
            "version": metadata.get("version"),
            "format": metadata.get("format") or "joblib",
            "sha256": metadata.get("sha256"),
            "model_class": metadata.get("model_class"),
            "compiled_by": source["compiled_by"],
            "compiled_from_version": source.get("from_version"),
        },
        "parity": source["parity"],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime": {
            "python": {"numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__},
            "browser": {"onnxruntime-web": ORT_WEB_VERSION} if page else None,
        },
        "files": {
            p.relative_to(root).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in files
        },
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", "utf-8")
