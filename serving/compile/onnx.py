"""Compile a stored version to ONNX (`serving optimize NAME VERSION --onnx`) and serve it.

The converted model must match the original before it is registered (`serving.compile.parity`:
equal labels, outputs within FP32 tolerance). With `--quantize` (serving/compile/quantize.py) the
model gets int8 weights and the looser `QuantGate` applies. The parity report goes into the new
version's metadata.

skl2onnx, onnxmltools and onnx are imported here and in `serving.compile.converters` (the
LightGBM/XGBoost converters and the missing-value fixes) only, and these modules only by the
`optimize` verb; the serving side of an ONNX version is `serving.runtime.onnx`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.compile import converters, text_onnx
from serving.compile.parity import SEED, SYNTHETIC_ROWS, parity_report, parity_rows
from serving.errors import StoreError
from serving.runtime.onnx import OnnxModel, from_metadata

if TYPE_CHECKING:
    from serving.compile.quantize import QuantGate

ONNX_ARTIFACT = "model.onnx"
# Fields of the source version's metadata that describe the version itself, not the model.
_OWN_FIELDS = ("name", "version", "artifact", "created_at", "created_by", "sha256", "size_bytes")


# -- conversion -------------------------------------------------------------------------------


def convert(model: Any, metadata: dict[str, Any]) -> bytes:
    """The model as ONNX bytes: one float tensor input "input" [None, n_features] (a bare text
    model: one string tensor [None, 1])."""
    features = metadata.get("features", [])
    text_model = text_onnx.is_text_model(metadata)
    for kind in ("categorical",) if text_model else ("text", "categorical"):
        named = [f["name"] for f in features if f.get("kind") == kind]
        if named:
            raise StoreError(
                f"cannot compile to ONNX: the model has {kind} features "
                f"({', '.join(named[:5])}); only all-numeric inputs are supported"
            )
    refusal = converters.unsupported(model)
    if refusal:
        raise StoreError(f"cannot compile to ONNX: {refusal}")
    from skl2onnx import convert_sklearn

    converters.prepare()
    converted = converters.for_conversion(model)  # options are keyed by id(): of this object
    options = _options(converted, metadata)
    if text_model:
        options = {**(options or {}), **text_onnx.options(converted)}
    try:
        with warnings.catch_warnings(), converters.int_flags():
            warnings.simplefilter("ignore")
            onx = convert_sklearn(
                converted,
                initial_types=_initial_types(metadata, text_model),
                options=options,
                target_opset=converters.TARGET_OPSET,
            )
    except Exception as exc:
        raise StoreError(
            f"skl2onnx cannot convert {type(model).__name__}: {_reason(exc)}"
        ) from None
    converters.route_missing_like_sklearn(onx, model)
    return onx.SerializeToString()


def _initial_types(metadata: dict[str, Any], text_model: bool) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType

    if text_model:
        return text_onnx.initial_types()
    return [("input", FloatTensorType([None, int(metadata["n_features"])]))]


def _reason(exc: BaseException) -> str:
    """One line: the error's first line without a dump of node attributes, then its cause."""
    first = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{type(exc).__name__}: {first.split(' and attributes=')[0][:300]}"
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        reason += f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]})"
    return reason


def _options(model: Any, metadata: dict[str, Any]) -> dict[int, dict[str, Any]] | None:
    """No ZipMap on the classifier: probabilities as one float tensor, labels as labels."""
    if metadata.get("task") != "classifier":
        return None
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return {id(final): {"zipmap": False}}


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
    onnx_bytes, report, quantization, metadata = compile_version(store, name, version, quantize)
    prepared = _new_metadata(metadata, version, report, quantization)
    return _register(store, name, onnx_bytes, prepared, actor), report


def compile_version(
    store: Any, name: str, version: int, quantize: QuantGate | None = None
) -> tuple[bytes, dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """The ONNX bytes of `name` v`version` once they passed the parity gate, without registering
    them: (bytes, parity report, quantization or None, the source's metadata)."""
    metadata = store.read_metadata(name, version)
    _check_source(name, version, metadata, quantize)
    original = _load_original(store, name, version, metadata)
    onnx_bytes = _onnx_bytes(store, name, version, original, metadata)
    quantization = None
    if quantize is not None:
        from serving.compile.quantize import quantize_model

        what = f"{name} v{version} ({_model_kind(original, metadata)})"
        onnx_bytes, quantization = quantize_model(onnx_bytes, what)
    compiled = _runtime_model(onnx_bytes, metadata)
    rows = (
        text_onnx.parity_rows(metadata, original, SYNTHETIC_ROWS, SEED)
        if text_onnx.is_text_model(metadata)
        else parity_rows(metadata)
    )
    report = parity_report(original, compiled, rows, metadata, quantize)
    if not report["ok"]:
        hint = text_onnx.HINT if text_onnx.is_text_model(metadata) else ""
        raise ParityError(report, _missing_values_hint(name, report, metadata) or hint)
    return onnx_bytes, report, quantization, metadata


def _check_source(
    name: str, version: int, metadata: dict[str, Any], quantize: QuantGate | None
) -> None:
    """Refuse what cannot be compiled further: quantized, or ONNX already without --quantize."""
    if metadata.get("quantization"):
        raise StoreError(f"{name} v{version} is already quantized")
    if metadata.get("format") == "onnx" and quantize is None:
        raise StoreError(f"{name} v{version} is already an ONNX version (add --quantize?)")


def _load_original(store: Any, name: str, version: int, metadata: dict[str, Any]) -> Any:
    """The source version as a worker loads it (sha256 and versions verified)."""
    from serving.runtime import artifacts

    try:
        return artifacts.load_version(store.version_dir(name, version), metadata, False)
    except artifacts.ModelLoadError as exc:
        raise StoreError(f"{name} v{version} cannot load: {exc.reason}") from None


def _onnx_bytes(
    store: Any, name: str, version: int, original: Any, metadata: dict[str, Any]
) -> bytes:
    """An ONNX version's own artifact, else the original converted by skl2onnx."""
    if metadata.get("format") == "onnx":
        return (store.version_dir(name, version) / ONNX_ARTIFACT).read_bytes()
    return convert(original, metadata)


def _runtime_model(onnx_bytes: bytes, metadata: dict[str, Any]) -> OnnxModel:
    try:
        return from_metadata(onnx_bytes, metadata)
    except Exception as exc:
        raise StoreError(f"ONNX Runtime cannot load the converted model: {exc}") from None


def _new_metadata(
    metadata: dict[str, Any],
    version: int,
    report: dict[str, Any],
    quantization: dict[str, Any] | None,
) -> dict[str, Any]:
    """The source's model description, plus where it came from and how it was compiled."""
    import onnxruntime
    import skl2onnx

    prepared = {k: v for k, v in metadata.items() if k not in _OWN_FIELDS}
    prepared.pop("quantization", None)
    prepared.update(scores=None, score_width=None)  # scores are served by the source version
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
    return prepared


def _register(
    store: Any, name: str, onnx_bytes: bytes, prepared: dict[str, Any], actor: str | None
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_ARTIFACT
        path.write_bytes(onnx_bytes)
        return int(store.register_prepared(name, path, prepared, ONNX_ARTIFACT, actor=actor))


def _model_kind(model: Any, metadata: dict[str, Any]) -> str:
    """The estimator that decides what ONNX operators come out (a Pipeline's last step)."""
    if isinstance(model, OnnxModel):
        return f"ONNX of {str(metadata.get('model_class', '?')).rsplit('.', 1)[-1]}"
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return type(final).__name__


def _missing_values_hint(name: str, report: dict[str, Any], metadata: dict[str, Any]) -> str:
    """When only the rows with missing values differ: how to compile the model without them."""
    if not report.get("ok_on_rows_without_missing_values"):
        return ""
    nullable = [f["name"] for f in metadata["features"] if f.get("nullable")]
    return (
        f"the ONNX model differs only on rows with missing values; to compile it, register the "
        f"artifact again as {name} with --not-nullable {','.join(nullable)} (null is then "
        "refused for those features) and optimize that version"
    )


class ParityError(StoreError):
    def __init__(self, report: dict[str, Any], hint: str = "") -> None:
        super().__init__("the ONNX model does not match the original; not registered", report)
        self.report = report
        self.hint = hint
