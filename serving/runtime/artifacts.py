"""Verify and load a stored version: sha256, scikit-learn version, then unpickle (or skops, ONNX).

joblib/pickle runs code when it loads: the store is trusted input, and SERVING_ALLOW_PICKLE=false
refuses it. Loading checks the sha256 recorded at registration and the scikit-learn version the
model was saved with; skops versions load with the trusted types recorded (docs/security.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import joblib
import sklearn

from serving.runtime.errors import ModelLoadError
from serving.runtime.onnx import load_onnx
from serving.runtime.skops_loading import load_skops
from serving.store.artifact_policy import pickle_allowed, refusal
from serving.store.artifacts import ARTIFACT_NAME
from serving.store.fsutil import sha256_file

__all__ = ["ModelLoadError", "load_version"]


def load_version(
    version_dir: Path,
    metadata: dict[str, Any],
    allow_mismatch: bool,
    allow_pickle: bool | None = None,  # None: SERVING_ALLOW_PICKLE (serving.store.artifact_policy)
) -> Any:
    """Verify and load one stored version, or raise ModelLoadError with the reason."""
    path = version_dir / metadata.get("artifact", ARTIFACT_NAME)
    if not path.is_file():
        raise ModelLoadError(f"artifact {path.name} is missing")
    actual = sha256_file(path)
    if actual != metadata.get("sha256"):
        raise ModelLoadError(
            f"sha256 mismatch: metadata says {str(metadata.get('sha256'))[:12]}..., "
            f"file is {actual[:12]}... (artifact changed or corrupt)"
        )
    if metadata.get("format") == "onnx":  # no pickle, no scikit-learn version to match
        return load_onnx(path, metadata)
    fmt = metadata.get("format") or "joblib"
    if fmt not in ("joblib", "skops"):
        raise ModelLoadError(f"unknown artifact format {fmt!r}")
    if fmt == "joblib" and not pickle_allowed(allow_pickle):
        raise ModelLoadError(refusal(path.name))
    trained = metadata.get("sklearn_version")
    if trained != sklearn.__version__ and not allow_mismatch:
        raise ModelLoadError(
            f"trained with scikit-learn {trained}, this server runs {sklearn.__version__} "
            "(retrain, or set SERVING_ALLOW_VERSION_MISMATCH=true to load it anyway)"
        )
    model = load_skops(path, metadata) if fmt == "skops" else _unpickle(path)
    if not callable(getattr(model, "predict", None)):
        raise ModelLoadError(f"{type(model).__name__} has no predict method")
    return model


def _unpickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot unpickle {path.name}: {type(exc).__name__}: {exc}") from None
