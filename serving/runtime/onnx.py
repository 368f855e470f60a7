"""The serving side of an ONNX version: an ONNX Runtime session that answers like scikit-learn.

onnxruntime is imported lazily, by the first ONNX version a worker loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime.errors import ModelLoadError


class OnnxModel:
    """An ONNX Runtime session that answers like a fitted scikit-learn estimator.

    Takes the float64 array or numeric DataFrame the schema produces (cast to float32), or a
    text model's strings (as an [N, 1] string tensor), runs on
    one thread, and returns numpy arrays: labels as the original classes, float64 probabilities;
    for other models (clusterers, outlier detectors) int64 labels when `output_dtype` says the
    original answered integers, else float64 values.
    """

    runtime_name = "onnxruntime"

    def __init__(
        self,
        model_bytes: bytes,
        task: str,
        classes: list[Any] | None,
        output_dtype: str | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._strings = self._session.get_inputs()[0].type == "tensor(string)"  # a text model
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.n_features_in_ = self._session.get_inputs()[0].shape[1]
        self.task = task
        self._integer_labels = task == "other" and output_dtype == "int64"
        if task == "classifier":
            self.classes_ = np.asarray(classes if classes is not None else [])
            self._probabilities = len(self._outputs) > 1

    def _run(self, X: Any, outputs: list[str]) -> list[Any]:
        if self._strings:  # a text model's strings, as the [N, 1] string tensor it takes
            return self._session.run(
                outputs, {self._input: np.asarray(X, dtype=object).reshape(-1, 1)}
            )
        x = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
        if x.ndim == 1:
            x = x.reshape(1, -1)
        return self._session.run(outputs, {self._input: x})

    def predict(self, X: Any) -> np.ndarray:
        if self.task != "classifier":
            (values,) = self._run(X, self._outputs[:1])
            values = np.asarray(values, dtype=np.int64 if self._integer_labels else np.float64)
            return values.ravel() if values.ndim == 2 and values.shape[1] == 1 else values
        (labels,) = self._run(X, self._outputs[:1])
        labels = np.asarray(labels).ravel()
        if self.classes_.size:
            return labels.astype(self.classes_.dtype)
        return labels

    def predict_proba(self, X: Any) -> np.ndarray:
        if self.task != "classifier" or not self._probabilities:
            raise AttributeError("this model has no predict_proba")
        (proba,) = self._run(X, self._outputs[1:2])
        return np.asarray(proba, dtype=np.float64)


def load_onnx(path: Path, metadata: dict[str, Any]) -> OnnxModel:
    """The serving object of an ONNX version (sha256 already checked by the caller)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelLoadError("an ONNX version needs onnxruntime, which is not installed") from None
    try:
        return from_metadata(path.read_bytes(), metadata)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path.name}: {type(exc).__name__}: {exc}") from None


def from_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> OnnxModel:
    """The session for a version's ONNX bytes, typed as its metadata says it answers."""
    return OnnxModel(
        model_bytes,
        str(metadata.get("task")),
        metadata.get("classes"),
        metadata.get("output_dtype"),
    )
