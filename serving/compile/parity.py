"""Does a compiled model answer as its original? Rows to compare on, and the comparison.

Both models score the version's `sample_input` rows plus synthetic rows drawn from its reference
statistics (numeric features: a reference bin picked by its proportion, then uniform between the
bin's edges, the outer bins bounded by min and max); every 10th synthetic row has missing values
(NaN) in the features the version takes them for (`nullable` in its metadata), about half of
them at a time. Labels must be equal; probabilities and
regression outputs must satisfy |onnx - original| <= ABS_TOL + REL_TOL * |original| (FP32
arithmetic in ONNX Runtime). A quantized model is held to its looser `QuantGate` instead.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.runtime.onnx import OnnxModel

if TYPE_CHECKING:
    from serving.compile.quantize import QuantGate

ABS_TOL = 1e-4
REL_TOL = 1e-5
SYNTHETIC_ROWS = 2000
SEED = 0
MISSING_EVERY = 10  # every 10th synthetic row gets NaN in nullable features


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
    synthetic = np.column_stack(columns)
    _put_missing(synthetic, metadata, rng)
    return np.vstack([sample, synthetic])


def _put_missing(rows: np.ndarray, metadata: dict[str, Any], rng: np.random.Generator) -> None:
    """NaN in every MISSING_EVERY-th row: each nullable feature with probability 1/2, and one
    of them (in turn) always, so every row so marked has a missing value."""
    nullable = np.flatnonzero([bool(f.get("nullable")) for f in metadata["features"]])
    if not nullable.size:
        return
    for k, i in enumerate(range(MISSING_EVERY - 1, len(rows), MISSING_EVERY)):
        chosen = nullable[rng.random(nullable.size) < 0.5]
        rows[i, chosen] = np.nan
        rows[i, nullable[k % nullable.size]] = np.nan


def parity_report(
    original: Any,
    compiled: OnnxModel,
    rows: np.ndarray,
    metadata: dict[str, Any],
    gate: QuantGate | None = None,
) -> dict[str, Any]:
    """Compare both models on `rows`: labels, probabilities or values; `ok` says if they match
    (exactly and within FP32 tolerance, or within `gate` for a quantized model).

    `rows_with_missing_values` counts the rows with a NaN; when the comparison fails,
    `ok_on_rows_without_missing_values` says whether the other rows alone would pass."""
    report = _compare(original, compiled, rows, metadata, gate)
    if rows.dtype.kind == "O":  # texts: no missing values
        return report | {"rows_with_missing_values": 0}
    missing = np.isnan(rows).any(axis=1)
    report["rows_with_missing_values"] = int(missing.sum())
    if not report["ok"] and missing.any() and not missing.all():
        complete = _compare(original, compiled, rows[~missing], metadata, gate)
        report["ok_on_rows_without_missing_values"] = complete["ok"]
    return report


def _compare(
    original: Any,
    compiled: OnnxModel,
    rows: np.ndarray,
    metadata: dict[str, Any],
    gate: QuantGate | None,
) -> dict[str, Any]:
    from serving.features.schema import InputSchema

    features = _quietly(InputSchema.from_metadata(metadata).convert, rows.tolist())
    report = _header(rows, metadata, gate)
    if metadata.get("task") == "classifier":
        checks = _classifier_checks(report, original, compiled, features, rows, metadata, gate)
    elif metadata.get("output_dtype") == "int64":  # cluster and outlier labels: equal
        expected = np.asarray(_quietly(original.predict, features))
        checks = [_labels_equal(report, expected, compiled.predict(rows), gate)]
    else:
        expected = _quietly(original.predict, features)
        checks = [_close(report, expected, compiled.predict(rows), "output", gate)]
    report["ok"] = all(checks)
    return report


def _header(rows: np.ndarray, metadata: dict[str, Any], gate: QuantGate | None) -> dict[str, Any]:
    """What was compared, and against which tolerance or gate."""
    sample_rows = len(metadata.get("sample_input") or [])
    report: dict[str, Any] = {
        "rows": len(rows),
        "sample_rows": sample_rows,
        "synthetic_rows": len(rows) - sample_rows,
        "seed": SEED,
    }
    if gate is None:
        report.update(abs_tolerance=ABS_TOL, rel_tolerance=REL_TOL)
    else:
        report["gate"] = gate.describe()
    return report


def _classifier_checks(
    report: dict[str, Any],
    original: Any,
    compiled: OnnxModel,
    features: Any,
    rows: np.ndarray,
    metadata: dict[str, Any],
    gate: QuantGate | None,
) -> list[bool]:
    """Labels (equal, or agreeing at the gate's share), then probabilities if the model has them."""
    expected = np.asarray(_quietly(original.predict, features))
    checks = [_labels_equal(report, expected, compiled.predict(rows), gate)]
    if metadata.get("predict_proba") and hasattr(original, "predict_proba"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected_proba = original.predict_proba(features)
            checks.append(
                _close(report, expected_proba, compiled.predict_proba(rows), "proba", gate)
            )
    return checks


def _labels_equal(
    report: dict[str, Any], expected: np.ndarray, got: Any, gate: QuantGate | None
) -> bool:
    """Labels equal on every row (or agreeing at the gate's share); the first mismatches."""
    got = np.asarray(got).reshape(expected.shape)
    mismatched = np.flatnonzero(got != expected)
    report["label_mismatches"] = len(mismatched)
    report["first_label_mismatches"] = [
        {"row": int(i), "original": _plain(expected[i]), "onnx": _plain(got[i])}
        for i in mismatched[:5]
    ]
    agreement = 1.0 - len(mismatched) / max(len(expected), 1)
    report["label_agreement"] = round(agreement, 6)
    return not len(mismatched) if gate is None else agreement >= gate.min_label_agreement


def _quietly(method: Any, argument: Any) -> Any:
    """`method(argument)` without its warnings (feature names, dtype conversions...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method(argument)


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
