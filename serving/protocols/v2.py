"""Open Inference Protocol (KServe "V2") payloads, with Triton's binary tensor extension. No Flask.

Requests are decoded by `serving.protocols.v2_request`, and matched with the model's inputs (one
tensor, or one per feature) by `serving.protocols.v2_features`; both are re-exported here:
`serving.api.v2` reaches the whole codec through this module. Responses put an output's data
in JSON, or after the JSON header when it asks for binary data.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidInput
from serving.protocols.v2_features import input_tensors
from serving.protocols.v2_features import model_rows as model_rows
from serving.protocols.v2_request import INPUT_DTYPES, PREDICT, PROBA, SCORES, InferRequest

# Re-exported: serving.api.v2 reaches the whole codec, requests included, through this module.
from serving.protocols.v2_request import InferRequestSchema as InferRequestSchema
from serving.protocols.v2_request import parse_index_request as parse_index_request
from serving.protocols.v2_request import parse_infer_request as parse_infer_request
from serving.runtime.model import LoadedModel, ModelState
from serving.runtime.predict import PredictionResult

SERVER_NAME = "serving"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "sklearn"
_DUMP = orjson.OPT_SERIALIZE_NUMPY


# -- tensors and datatypes ---------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype; strings and other objects are BYTES."""
    bits = dtype.itemsize * 8
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in "iu":
        return f"{'INT' if dtype.kind == 'i' else 'UINT'}{bits}"
    if dtype.kind == "f" and bits in (16, 32, 64):
        return f"FP{bits}"
    return "BYTES"


_ANSWER_DATATYPES = {"int64": "INT64", "float64": "FP64", "bool": "BOOL", "object": "BYTES"}


def output_specs(loaded: LoadedModel) -> dict[str, TensorSpec]:
    """`predict` (typed like the class labels, else like the answer at register; FP64 when
    unknown), one column per output of a multi-output model; `predict_proba` if any."""
    classes = loaded.classes
    if classes:
        label = datatype_of(np.asarray(classes).dtype)
    else:
        label = _ANSWER_DATATYPES.get(loaded.output_dtype or "", "FP64")
    shape = (-1, loaded.outputs) if loaded.outputs else (-1,)
    specs = {PREDICT: TensorSpec(PREDICT, label, shape)}
    if loaded.can_proba:
        specs[PROBA] = TensorSpec(PROBA, "FP64", (-1, len(classes) if classes else -1))
    if loaded.score_method is not None:
        width = loaded.score_width
        specs[SCORES] = TensorSpec(SCORES, "FP64", (-1, width) if width > 1 else (-1,))
    return specs


# -- responses without tensors -----------------------------------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(loaded: LoadedModel, versions: list[int]) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": input_tensors(loaded.schema),
        "outputs": [spec.to_dict() for spec in output_specs(loaded).values()],
    }


def repository_index(
    versions: Mapping[str, list[int]], states: Mapping[str, ModelState], ready_only: bool
) -> list[dict[str, str]]:
    """One entry per stored version: READY when this worker serves it, else why not."""
    entries = []
    for name, numbers in versions.items():
        state = states.get(name)
        serving = {m.version for m in state.serving.values()} if state else set()
        reasons = {v: state.problems.get(a, "") for a, v in state.wanted.items()} if state else {}
        for version in numbers:
            if version in serving:
                entry = {"state": "READY", "reason": ""}
            else:
                reason = reasons.get(version) or "no alias deploys this version"
                entry = {"state": "UNAVAILABLE", "reason": reason}
            if entry["state"] == "READY" or not ready_only:
                entries.append({"name": name, "version": str(version), **entry})
    return entries


# -- infer responses ---------------------------------------------------------------------------


def check_outputs(request: InferRequest, specs: Mapping[str, TensorSpec]) -> None:
    """Refuse outputs the model does not have (e.g. predict_proba of a regressor)."""
    for output in request.outputs:
        if output.name not in specs:
            why = _WHY_MISSING.get(output.name, "")
            raise InvalidInput(
                f"this model has no output {output.name!r}{why}: its outputs are "
                + ", ".join(specs)
            )


_WHY_MISSING = {
    PROBA: " (only classifiers with predict_proba have it)",
    SCORES: " (only models with decision_function or score_samples have it)",
}


def encode_infer_response(
    result: PredictionResult, request: InferRequest, specs: Mapping[str, TensorSpec]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs, chunks = [], []
    for wanted in request.outputs:
        datatype = specs[wanted.name].datatype
        array = _output_array(result, wanted.name, datatype)
        tensor: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if wanted.binary:
            chunks.append(_to_bytes(array, datatype))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = _to_json_data(array, datatype)
        outputs.append(tensor)
    body: dict[str, Any] = {"model_name": result.model, "model_version": str(result.version)}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    header = orjson.dumps(body, option=_DUMP)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _output_array(result: PredictionResult, name: str, datatype: str) -> np.ndarray:
    if name == PROBA:
        return np.asarray(result.probabilities, dtype=np.float64)
    if name == SCORES:
        return np.asarray(result.scores, dtype=np.float64)
    labels = np.asarray(result.predictions)
    if datatype == "BYTES":
        return labels
    return labels.astype(datatype_dtype(datatype), copy=False)


def datatype_dtype(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of a numeric or BOOL V2 datatype."""
    return np.dtype("?") if datatype == "BOOL" else np.dtype(INPUT_DTYPES[datatype])


def _to_json_data(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [_text(v) for v in array.ravel().tolist()]
    return np.ascontiguousarray(array).ravel()


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    """Row-major little-endian; a BYTES element is a 4-byte LE length and its UTF-8 bytes."""
    if datatype == "BYTES":
        items = [_text(v).encode() for v in array.ravel().tolist()]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _text(value: Any) -> str:
    return value if type(value) is str else str(value)
