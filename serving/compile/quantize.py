"""Dynamic int8 quantization of a compiled model (`serving optimize NAME VERSION --quantize`).

onnxruntime's dynamic quantization stores the weights of `MatMul` nodes as int8 and quantizes
their inputs on the fly (`DynamicQuantizeLinear` + `MatMulInteger`). Of the operators skl2onnx
emits for numeric models, `MatMul` is the only one it rewrites: MLPs, PCA / projections and
other matrix products benefit; linear models (`LinearClassifier`, `LinearRegressor`) and tree
ensembles (`TreeEnsemble*`) convert to ai.onnx.ml operators that stay float, so for them there
is nothing to quantize and the verb refuses with a message instead of registering a copy.

int8 weights change the outputs a little, so the gate is looser than the FP32 one (`QuantGate`),
and it is recorded with the measured figures in the new version's metadata.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serving.errors import StoreError

# What dynamic quantization rewrites among the operators skl2onnx emits (Gemm is not quantized
# dynamically by onnxruntime; Conv, LSTM, Attention, Gather never come out of scikit-learn).
QUANTIZED_OPS = ("MatMul",)
WEIGHT_TYPE = "QInt8"


@dataclass(frozen=True)
class QuantGate:
    """When a quantized model may replace the original (all of these must hold).

    Classifiers: the share of rows with the same label as the original is at least
    `min_label_agreement`, and no probability differs by more than `max_proba_diff`.
    Regressors: no output differs by more than `max_value_diff` standard deviations of the
    original's outputs on the same rows.
    """

    min_label_agreement: float = 0.99
    max_proba_diff: float = 0.1
    max_value_diff: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_label_agreement <= 1.0:
            raise StoreError("--min-label-agreement must be between 0 and 1")
        if not 0.0 <= self.max_proba_diff <= 1.0:
            raise StoreError("--max-proba-diff must be between 0 and 1")
        if self.max_value_diff < 0.0:
            raise StoreError("--max-value-diff must be at least 0")

    def describe(self) -> dict[str, float]:
        return asdict(self)


def quantizable_ops(onnx_bytes: bytes) -> tuple[Counter[str], Counter[str]]:
    """(operators dynamic quantization rewrites, all operators) of a model's graph."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    ops = Counter(node.op_type for node in graph.node)
    constants = {init.name for init in graph.initializer}
    # Only products by a constant (a weight matrix) are quantized (MatMulConstBOnly).
    targets = Counter(
        node.op_type
        for node in graph.node
        if node.domain in ("", "ai.onnx")
        and node.op_type in QUANTIZED_OPS
        and len(node.input) > 1
        and node.input[1] in constants
    )
    return targets, ops


def quantize_model(onnx_bytes: bytes, what: str) -> tuple[bytes, dict[str, Any]]:
    """int8 weights for every constant MatMul; StoreError when the model has none."""
    targets, ops = quantizable_ops(onnx_bytes)
    if not targets:
        listed = ", ".join(sorted(ops)) or "none"
        raise StoreError(
            f"cannot quantize {what}: its ONNX graph has no MatMul with constant weights, the "
            f"only operator int8 dynamic quantization rewrites (it has: {listed}). Linear models "
            "and tree ensembles convert to ai.onnx.ml operators that stay float and would gain "
            "nothing; use --onnx alone"
        )
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        root = logging.getLogger()
        root.addFilter(_no_preprocessing_advice)
        try:
            quantize_dynamic(
                source,
                target,
                op_types_to_quantize=list(QUANTIZED_OPS),
                weight_type=QuantType.QInt8,
                # 7-bit weights: x86 CPUs without VNNI (AVX2) saturate 8-bit u8s8 products.
                reduce_range=True,
                # ai.onnx.ml nodes (Scaler, LinearClassifier...) defeat shape inference.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise StoreError(
                f"onnxruntime cannot quantize {what}: {type(exc).__name__}: {first[:300]}"
            ) from None
        finally:
            root.removeFilter(_no_preprocessing_advice)
        quantized = target.read_bytes()
    graph = onnx.load_from_string(quantized).graph
    if not any(node.op_type == "MatMulInteger" for node in graph.node):
        raise StoreError(f"cannot quantize {what}: onnxruntime quantized none of its MatMul nodes")
    return quantized, {
        "method": "dynamic",
        "weight_type": WEIGHT_TYPE,
        "quantized_nodes": dict(targets),
        "size_bytes_fp32": len(onnx_bytes),
        "size_bytes_int8": len(quantized),
    }


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drop onnxruntime's advice to run its shape-inference pre-processing first (a root-logger
    warning on every call): it helps large CNNs and changes nothing for scikit-learn graphs."""
    return not str(record.msg).startswith("Please consider to run pre-processing")
