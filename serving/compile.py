"""Compile a stored version to ONNX (`serving optimize NAME VERSION --onnx`) and serve it.

The converted model must match the original before it is registered: both score the version's
`sample_input` rows plus synthetic rows drawn from its reference statistics (numeric features:
a reference bin picked by its proportion, then uniform between the bin's edges, the outer bins
bounded by min and max). Labels must be equal; probabilities and regression outputs must satisfy
|onnx - original| <= ABS_TOL + REL_TOL * |original| (FP32 arithmetic in ONNX Runtime). The
parity report goes into the new version's metadata.

skl2onnx, onnx and onnxruntime are imported here only, and this module only by the `optimize`
verb and by `artifacts.load_version` for a version whose metadata says `"format": "onnx"`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import StoreError

ONNX_ARTIFACT = "model.onnx"
ABS_TOL = 1e-4
REL_TOL = 1e-5
SYNTHETIC_ROWS = 2000
SEED = 0
# Fields of the source version's metadata that describe the version itself, not the model.
_OWN_FIELDS = ("name", "version", "artifact", "created_at", "created_by", "sha256", "size_bytes")


class OnnxModel:
    """An ONNX Runtime session that answers like a fitted scikit-learn estimator.

    Takes the float64 array or numeric DataFrame the schema produces (cast to float32), runs on
    one thread, and returns numpy arrays: labels as the original classes, float64 probabilities.
    """

    runtime_name = "onnxruntime"

    def __init__(self, model_bytes: bytes, task: str, classes: list[Any] | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.n_features_in_ = self._session.get_inputs()[0].shape[1]
        self.task = task
        if task == "classifier":
            self.classes_ = np.asarray(classes if classes is not None else [])
            self._probabilities = len(self._outputs) > 1

    def _run(self, X: Any, outputs: list[str]) -> list[Any]:
        x = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
        if x.ndim == 1:
            x = x.reshape(1, -1)
        return self._session.run(outputs, {self._input: x})

    def predict(self, X: Any) -> np.ndarray:
        if self.task != "classifier":
            (values,) = self._run(X, self._outputs[:1])
            values = np.asarray(values, dtype=np.float64)
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
    from serving.artifacts import ModelLoadError

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelLoadError("an ONNX version needs onnxruntime, which is not installed") from None
    try:
        return OnnxModel(path.read_bytes(), str(metadata.get("task")), metadata.get("classes"))
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path.name}: {type(exc).__name__}: {exc}") from None


# -- conversion -------------------------------------------------------------------------------


def convert(model: Any, metadata: dict[str, Any]) -> bytes:
    """The model as ONNX bytes: one float tensor input "input" [None, n_features]."""
    categorical = [f["name"] for f in metadata.get("features", []) if f.get("kind") != "numeric"]
    if categorical:
        raise StoreError(
            "cannot compile to ONNX: the model has categorical features "
            f"({', '.join(categorical[:5])}); only all-numeric inputs are supported"
        )
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if metadata.get("task") == "classifier" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onx = convert_sklearn(
                model,
                initial_types=[("input", FloatTensorType([None, int(metadata["n_features"])]))],
                options=options,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StoreError(
            f"skl2onnx cannot convert {type(model).__name__}: {type(exc).__name__}: {first[:300]}"
        ) from None
    return onx.SerializeToString()


def parity_rows(metadata: dict[str, Any], n: int = SYNTHETIC_ROWS, seed: int = SEED) -> np.ndarray:
    """The sample input rows plus `n` synthetic rows drawn from the reference statistics."""
    n_features = int(metadata["n_features"])
    sample = np.asarray(metadata.get("sample_input") or [], dtype=np.float64).reshape(
        -1, n_features
    )
    stats = (metadata.get("reference_stats") or {}).get("features") or {}
    labels = [f["name"] for f in metadata["features"]]
    rng = np.random.default_rng(seed)
    columns = []
    for j, label in enumerate(labels):
        feature = stats.get(label) or {}
        if "min" in feature and "max" in feature:
            bounds = np.asarray([feature["min"], *feature["edges"], feature["max"]], dtype=float)
            weights = np.asarray(feature["proportions"], dtype=float)
            bins = rng.choice(len(weights), size=n, p=weights / weights.sum())
            low, high = bounds[bins], bounds[bins + 1]
            columns.append(low + rng.random(n) * (high - low))
        else:  # no statistics: spread around the sample values
            centre = float(sample[:, j].mean()) if len(sample) else 0.0
            scale = abs(centre) + 1.0
            columns.append(rng.uniform(centre - scale, centre + scale, n))
    return np.vstack([sample, np.column_stack(columns)])


def parity_report(
    original: Any, compiled: OnnxModel, rows: np.ndarray, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Compare both models on `rows`: labels, probabilities or values; `ok` says if they match."""
    from serving.schema import InputSchema

    schema = InputSchema.from_metadata(metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = schema.convert(rows.tolist())
        expected = np.asarray(original.predict(features))
    got = compiled.predict(rows)
    report: dict[str, Any] = {
        "rows": len(rows),
        "sample_rows": len(metadata.get("sample_input") or []),
        "synthetic_rows": len(rows) - len(metadata.get("sample_input") or []),
        "seed": SEED,
        "abs_tolerance": ABS_TOL,
        "rel_tolerance": REL_TOL,
    }
    checks = []
    if metadata.get("task") == "classifier":
        mismatched = np.flatnonzero(np.asarray(got) != expected)
        report["label_mismatches"] = len(mismatched)
        report["first_label_mismatches"] = [
            {"row": int(i), "original": _plain(expected[i]), "onnx": _plain(got[i])}
            for i in mismatched[:5]
        ]
        checks.append(not len(mismatched))
        if metadata.get("predict_proba") and hasattr(original, "predict_proba"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                checks.append(
                    _close(
                        report,
                        original.predict_proba(features),
                        compiled.predict_proba(rows),
                        "proba",
                    )
                )
    else:
        checks.append(_close(report, expected, got, "output"))
    report["ok"] = all(checks)
    return report


def _close(report: dict[str, Any], expected: Any, got: Any, what: str) -> bool:
    expected = np.asarray(expected, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
    diff = np.abs(got - expected)
    allowed = ABS_TOL + REL_TOL * np.abs(expected)
    bad = diff > allowed
    report[f"{what}_max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    report[f"{what}_out_of_tolerance"] = int(
        np.any(bad, axis=1).sum() if bad.ndim == 2 else bad.sum()
    )
    return not bool(bad.any())


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- the verb ---------------------------------------------------------------------------------


def optimize(
    store: Any, name: str, version: int, actor: str | None = None
) -> tuple[int, dict[str, Any]]:
    """Compile `name` v`version` to ONNX and register it as a new version; (version, parity)."""
    import onnxruntime
    import skl2onnx

    from serving import artifacts

    metadata = store.read_metadata(name, version)
    if metadata.get("format") == "onnx":
        raise StoreError(f"{name} v{version} is already an ONNX version")
    try:
        original = artifacts.load_version(store.version_dir(name, version), metadata, False)
    except artifacts.ModelLoadError as exc:
        raise StoreError(f"{name} v{version} cannot load: {exc.reason}") from None
    onnx_bytes = convert(original, metadata)
    try:
        compiled = OnnxModel(onnx_bytes, str(metadata.get("task")), metadata.get("classes"))
    except Exception as exc:
        raise StoreError(f"ONNX Runtime cannot load the converted model: {exc}") from None
    report = parity_report(original, compiled, parity_rows(metadata), metadata)
    if not report["ok"]:
        raise ParityError(report)
    prepared = {k: v for k, v in metadata.items() if k not in _OWN_FIELDS}
    prepared.update(
        format="onnx",
        source_version=int(version),
        parity=report,
        onnxruntime_version=onnxruntime.__version__,
        skl2onnx_version=skl2onnx.__version__,
        metrics={},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_ARTIFACT
        path.write_bytes(onnx_bytes)
        new = store.register_prepared(name, path, prepared, ONNX_ARTIFACT, actor=actor)
    return new, report


class ParityError(StoreError):
    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("the ONNX model does not match the original; not registered", report)
        self.report = report


def run_cli(store: Any, args: argparse.Namespace) -> int:
    if args.quantize:
        print("error: --quantize is not implemented yet", file=sys.stderr)
        return 1
    if not args.onnx:
        print("error: say how to optimize: --onnx", file=sys.stderr)
        return 1
    try:
        version, report = optimize(store, args.name, args.version, args.actor)
    except ParityError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        print(json.dumps(exc.report, indent=2, default=str), file=sys.stderr)
        return 1
    print(
        f"{args.name}: version {version} (ONNX) from version {args.version}; parity ok on "
        f"{report['rows']} rows (labels equal, |diff| <= {ABS_TOL:g} + {REL_TOL:g}*|value|)",
        file=sys.stderr,
    )
    print(version)
    return 0
