"""Compile a stored version to ONNX (`serving optimize NAME VERSION --onnx`) and serve it.

The converted model must match the original before it is registered: both score the version's
`sample_input` rows plus synthetic rows drawn from its reference statistics (numeric features:
a reference bin picked by its proportion, then uniform between the bin's edges, the outer bins
bounded by min and max). Labels must be equal; probabilities and regression outputs must satisfy
|onnx - original| <= ABS_TOL + REL_TOL * |original| (FP32 arithmetic in ONNX Runtime). With
`--quantize` (serving/quantize.py) the model gets int8 weights and the looser `QuantGate` applies.
The parity report goes into the new version's metadata.

skl2onnx and onnx are imported here only, and this module only by the `optimize` verb; the
serving side of an ONNX version is `serving.runtime.onnx`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.errors import StoreError
from serving.runtime.onnx import OnnxModel

if TYPE_CHECKING:
    from serving.compile.quantize import QuantGate

ONNX_ARTIFACT = "model.onnx"
ABS_TOL = 1e-4
REL_TOL = 1e-5
SYNTHETIC_ROWS = 2000
SEED = 0
# Fields of the source version's metadata that describe the version itself, not the model.
_OWN_FIELDS = ("name", "version", "artifact", "created_at", "created_by", "sha256", "size_bytes")


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
    original: Any,
    compiled: OnnxModel,
    rows: np.ndarray,
    metadata: dict[str, Any],
    gate: QuantGate | None = None,
) -> dict[str, Any]:
    """Compare both models on `rows`: labels, probabilities or values; `ok` says if they match
    (exactly and within FP32 tolerance, or within `gate` for a quantized model)."""
    from serving.features.schema import InputSchema

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
    }
    if gate is None:
        report.update(abs_tolerance=ABS_TOL, rel_tolerance=REL_TOL)
    else:
        report["gate"] = gate.describe()
    checks = []
    if metadata.get("task") == "classifier":
        mismatched = np.flatnonzero(np.asarray(got) != expected)
        report["label_mismatches"] = len(mismatched)
        report["first_label_mismatches"] = [
            {"row": int(i), "original": _plain(expected[i]), "onnx": _plain(got[i])}
            for i in mismatched[:5]
        ]
        agreement = 1.0 - len(mismatched) / max(len(rows), 1)
        report["label_agreement"] = round(agreement, 6)
        checks.append(
            not len(mismatched) if gate is None else agreement >= gate.min_label_agreement
        )
        if metadata.get("predict_proba") and hasattr(original, "predict_proba"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                checks.append(
                    _close(
                        report,
                        original.predict_proba(features),
                        compiled.predict_proba(rows),
                        "proba",
                        gate,
                    )
                )
    else:
        checks.append(_close(report, expected, got, "output", gate))
    report["ok"] = all(checks)
    return report


def _close(
    report: dict[str, Any], expected: Any, got: Any, what: str, gate: QuantGate | None = None
) -> bool:
    expected = np.asarray(expected, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
    diff = np.abs(got - expected)
    if gate is not None:
        return _within_gate(report, expected, diff, what, gate)
    allowed = ABS_TOL + REL_TOL * np.abs(expected)
    bad = diff > allowed
    report[f"{what}_max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    report[f"{what}_out_of_tolerance"] = int(
        np.any(bad, axis=1).sum() if bad.ndim == 2 else bad.sum()
    )
    return not bool(bad.any())


def _within_gate(
    report: dict[str, Any], expected: np.ndarray, diff: np.ndarray, what: str, gate: QuantGate
) -> bool:
    """The quantized gate: max |diff| of probabilities, or of values in output std units."""
    largest = float(diff.max()) if diff.size else 0.0
    report[f"{what}_max_abs_diff"] = largest
    report[f"{what}_mean_abs_diff"] = float(diff.mean()) if diff.size else 0.0
    per_row = diff.max(axis=1) if diff.ndim == 2 else diff
    report[f"{what}_p99_abs_diff"] = float(np.quantile(per_row, 0.99)) if diff.size else 0.0
    if what == "proba":
        return largest <= gate.max_proba_diff
    std = float(expected.std()) if expected.size else 0.0
    report["output_std"] = std
    report["output_max_diff_in_std"] = largest / std if std > 0 else (0.0 if not largest else None)
    return largest <= gate.max_value_diff * std


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- the verb ---------------------------------------------------------------------------------


def optimize(
    store: Any,
    name: str,
    version: int,
    actor: str | None = None,
    quantize: QuantGate | None = None,
) -> tuple[int, dict[str, Any]]:
    """Compile `name` v`version` to ONNX (int8 weights with `quantize`) and register it as a new
    version; (version, parity). An FP32 ONNX version can be quantized too."""
    import onnxruntime
    import skl2onnx

    from serving.runtime import artifacts

    metadata = store.read_metadata(name, version)
    if metadata.get("quantization"):
        raise StoreError(f"{name} v{version} is already quantized")
    is_onnx = metadata.get("format") == "onnx"
    if is_onnx and quantize is None:
        raise StoreError(f"{name} v{version} is already an ONNX version (add --quantize?)")
    folder = store.version_dir(name, version)
    try:
        original = artifacts.load_version(folder, metadata, False)
    except artifacts.ModelLoadError as exc:
        raise StoreError(f"{name} v{version} cannot load: {exc.reason}") from None
    onnx_bytes = (folder / ONNX_ARTIFACT).read_bytes() if is_onnx else convert(original, metadata)
    quantization = None
    if quantize is not None:
        from serving.compile.quantize import quantize_model

        what = f"{name} v{version} ({_model_kind(original, metadata)})"
        onnx_bytes, quantization = quantize_model(onnx_bytes, what)
    try:
        compiled = OnnxModel(onnx_bytes, str(metadata.get("task")), metadata.get("classes"))
    except Exception as exc:
        raise StoreError(f"ONNX Runtime cannot load the converted model: {exc}") from None
    report = parity_report(original, compiled, parity_rows(metadata), metadata, quantize)
    if not report["ok"]:
        raise ParityError(report)
    prepared = {k: v for k, v in metadata.items() if k not in _OWN_FIELDS}
    prepared.pop("quantization", None)
    prepared.update(
        format="onnx",
        source_version=int(version),
        parity=report,
        onnxruntime_version=onnxruntime.__version__,
        skl2onnx_version=skl2onnx.__version__,
        metrics={},
    )
    if quantization is not None:
        prepared["quantization"] = quantization
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_ARTIFACT
        path.write_bytes(onnx_bytes)
        new = store.register_prepared(name, path, prepared, ONNX_ARTIFACT, actor=actor)
    return new, report


def _model_kind(model: Any, metadata: dict[str, Any]) -> str:
    """The estimator that decides what ONNX operators come out (a Pipeline's last step)."""
    if isinstance(model, OnnxModel):
        return f"ONNX of {str(metadata.get('model_class', '?')).rsplit('.', 1)[-1]}"
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return type(final).__name__


class ParityError(StoreError):
    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("the ONNX model does not match the original; not registered", report)
        self.report = report
