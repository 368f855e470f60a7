"""Open Inference Protocol (KServe "V2") payloads, with Triton's binary tensor extension. No Flask.

An infer request is JSON, or a JSON header (`Inference-Header-Content-Length` bytes) followed by
raw tensors: little-endian, row-major, in the order of the inputs. Numbers are decoded by numpy
in one go (`np.frombuffer` for binary tensors, never per value); the model's schema checks them.
Responses put an output's data in JSON, or after the JSON header when it asks for binary data.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from serving.errors import InvalidInput, MalformedRequest
from serving.runtime.model import LoadedModel, ModelState
from serving.runtime.predict import PredictionResult

SERVER_NAME = "serving"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "sklearn"
INPUT_NAME = "input-0"
PREDICT, PROBA = "predict", "predict_proba"

# Input datatypes a numeric model takes, as little-endian numpy dtypes (binary data is LE).
_INPUT_DTYPES = {
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "the shared-memory extension",
    "classification": "the classification extension",
}
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


def input_spec(loaded: LoadedModel) -> TensorSpec:
    return TensorSpec(INPUT_NAME, "FP64", (-1, loaded.schema.n_features))


def output_specs(loaded: LoadedModel) -> dict[str, TensorSpec]:
    """`predict` (typed like the class labels; FP64 for a regressor), `predict_proba` if any."""
    classes = loaded.classes
    label = datatype_of(np.asarray(classes).dtype) if classes else "FP64"
    specs = {PREDICT: TensorSpec(PREDICT, label, (-1,))}
    if loaded.can_proba:
        specs[PROBA] = TensorSpec(PROBA, "FP64", (-1, len(classes) if classes else -1))
    return specs


# -- responses without tensors -----------------------------------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(loaded: LoadedModel, versions: list[int]) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [input_spec(loaded).to_dict()],
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


def parse_index_request(body: bytes) -> bool:
    """The optional `{"ready": true}` filter of a repository index request."""
    payload = _loads(body) if body.strip() else {}
    if type(payload) is not dict:
        raise MalformedRequest("the repository index request must be a JSON object")
    return _flag(payload, "ready", "the repository index request")


# -- infer requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    array: np.ndarray
    outputs: tuple[RequestedOutput, ...]  # in request order: [predict] when none were asked

    def wants(self, name: str) -> bool:
        return any(output.name == name for output in self.outputs)


class InferInputSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    shape = fields.List(fields.Integer(strict=True), required=True)
    datatype = fields.String(required=True)
    parameters = fields.Dict(keys=fields.String(), load_default=dict)
    data = fields.Raw(load_default=None)


class InferOutputSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    parameters = fields.Dict(keys=fields.String(), load_default=dict)


class InferRequestSchema(Schema):
    """The infer request envelope; tensor data is decoded by numpy, not here."""

    class Meta:
        unknown = EXCLUDE  # e.g. "model_name", which Triton's own examples send

    id = fields.String(load_default=None)
    parameters = fields.Dict(keys=fields.String(), load_default=dict)
    inputs = fields.List(fields.Nested(InferInputSchema), required=True)
    outputs = fields.List(fields.Nested(InferOutputSchema), load_default=list)


_REQUEST_SCHEMA = InferRequestSchema()


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an infer request body; MalformedRequest / InvalidInput name what is wrong."""
    header, binary = _split_body(body, header_length)
    payload = _load_envelope(header)
    if len(payload["inputs"]) != 1:
        raise InvalidInput(
            f"expected exactly one input tensor of shape [N, n_features], "
            f"got {len(payload['inputs'])}"
        )
    spec = payload["inputs"][0]
    array = _decode_input(spec, binary, _may_have_bools(header, payload))
    binary_default = _flag(payload["parameters"], "binary_data_output", "request parameter")
    outputs = tuple(_requested_output(o, binary_default) for o in payload["outputs"])
    return InferRequest(
        id=payload["id"],
        array=array,
        outputs=outputs or (RequestedOutput(PREDICT, binary_default),),
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header, and a zero-copy view of the binary tensors after it."""
    if not body:
        raise MalformedRequest("the request body is empty: send an inference request")
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length must be an integer between 1 and the body "
            f"size {len(body)}, got {header_length!r}"
        )
    return body[:length], memoryview(body)[length:]


def _load_envelope(header: bytes) -> dict[str, Any]:
    payload = _loads(header)
    if type(payload) is not dict:
        raise InvalidInput("the inference request must be a JSON object")
    try:
        return _REQUEST_SCHEMA.load(payload)  # type: ignore[no-any-return]
    except ValidationError as err:
        raise InvalidInput(
            f"the inference request does not match the protocol: {_flatten(err.messages_dict)}"
        ) from None


def _requested_output(output: dict[str, Any], binary_default: bool) -> RequestedOutput:
    name, parameters = output["name"], output["parameters"]
    _refuse_unsupported(parameters, f"output {name!r}")
    binary = _flag(parameters, "binary_data", f"output {name!r}", binary_default)
    return RequestedOutput(name, binary)


def _decode_input(spec: dict[str, Any], binary: memoryview, may_have_bools: bool) -> np.ndarray:
    name, shape, parameters = spec["name"], spec["shape"], spec["parameters"]
    tensor = _Tensor(f"input {name!r}", shape, spec["datatype"])
    _refuse_unsupported(parameters, tensor.what)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"{tensor.what}: shape {shape} has a negative dimension")
    size = parameters.get("binary_data_size")
    if size is not None and spec["data"] is not None:
        raise InvalidInput(f"{tensor.what}: give data or parameters.binary_data_size, not both")
    if size is not None:
        return tensor.from_binary(size, binary)
    if binary:
        raise InvalidInput(
            f"{len(binary)} bytes follow the JSON header but {tensor.what} has no binary_data_size"
        )
    if spec["data"] is None:
        raise InvalidInput(f"{tensor.what} has neither data nor parameters.binary_data_size")
    return tensor.from_json(spec["data"], may_have_bools)


class _Tensor:
    """One input tensor's declared shape and datatype, and the decoding of its data."""

    def __init__(self, what: str, shape: list[int], datatype: str) -> None:
        if datatype not in _INPUT_DTYPES:
            raise InvalidInput(
                f"{what}: datatype {datatype!r} is not supported: use one of "
                + ", ".join(_INPUT_DTYPES)
            )
        self.what, self.shape, self.datatype = what, shape, datatype
        self.dtype = np.dtype(_INPUT_DTYPES[datatype])

    def from_binary(self, size: Any, binary: memoryview) -> np.ndarray:
        count = math.prod(self.shape)
        expected = count * self.dtype.itemsize
        if type(size) is not int or size != expected:
            raise InvalidInput(
                f"{self.what}: binary_data_size is {size!r} but shape {self.shape} of "
                f"{self.datatype} ({self.dtype.itemsize} bytes each) takes {expected} bytes"
            )
        if size != len(binary):
            raise InvalidInput(
                f"{self.what}: binary_data_size is {size} but {len(binary)} bytes "
                "follow the JSON header"
            )
        return np.frombuffer(binary, dtype=self.dtype, count=count).reshape(self.shape)

    def from_json(self, data: Any, may_have_bools: bool) -> np.ndarray:
        try:
            array = np.array(data)
        except (ValueError, TypeError, OverflowError):  # ragged nesting, huge integers
            raise InvalidInput(f"{self.what}: data is not a rectangular array of numbers") from None
        kinds = "iu" if self.dtype.kind in "iu" else "iuf"
        if array.dtype.kind not in kinds or (may_have_bools and _has_bool(data)):
            expected = "integers" if kinds == "iu" else "numbers"
            raise InvalidInput(f"{self.what}: {self.datatype} data must hold only {expected}")
        if list(array.shape) != self.shape:
            if array.ndim != 1 or array.size != math.prod(self.shape):
                raise InvalidInput(
                    f"{self.what}: data has shape {list(array.shape)} ({array.size} values), "
                    f"which does not fit shape {self.shape}"
                )
            array = array.reshape(self.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            typed = array.astype(self.dtype)
            lost = typed != array if kinds == "iu" else np.isinf(typed) & np.isfinite(array)
        if lost.any():
            raise InvalidInput(f"{self.what}: data holds values out of range for {self.datatype}")
        return typed


def _has_bool(data: Any) -> bool:
    """JSON true/false would pass as 1/0 in a numeric array: look for them (regular data only)."""
    return any(type(v) is bool for v in np.array(data, dtype=object).ravel().tolist())


def _may_have_bools(header: bytes, payload: dict[str, Any]) -> bool:
    """False when every true/false token of the JSON header is a known parameter value."""
    tokens = header.count(b"true") + header.count(b"false")
    if not tokens:
        return False
    dicts = [payload["parameters"]] + [t["parameters"] for t in payload["inputs"]]
    dicts += [t["parameters"] for t in payload["outputs"]]
    return tokens > sum(type(v) is bool for d in dicts for v in d.values())


def _refuse_unsupported(parameters: dict[str, Any], what: str) -> None:
    for key, extension in _UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise InvalidInput(f"{what}: {extension} is not supported by this server")


def _flag(parameters: dict[str, Any], key: str, what: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if type(value) is not bool:
        raise InvalidInput(f"{what}: {key} must be true or false, got {value!r}")
    return value


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:  # NaN/Infinity parse here, so the schema can say which row and feature hold them
        return json.loads(raw)
    except UnicodeDecodeError:
        raise MalformedRequest("the JSON header is not valid UTF-8") from None
    except ValueError as exc:
        raise MalformedRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedRequest("malformed JSON: nested too deeply") from None


def _flatten(messages: Any, prefix: str = "") -> str:
    """marshmallow's nested messages as one line: `inputs.0.shape: Not a valid list.`"""
    if isinstance(messages, dict):
        return "; ".join(_flatten(v, f"{prefix}{k}.") for k, v in messages.items())
    text = " ".join(messages) if isinstance(messages, list) else str(messages)
    return f"{prefix.rstrip('.')}: {text}"


# -- infer responses ---------------------------------------------------------------------------


def check_outputs(request: InferRequest, specs: Mapping[str, TensorSpec]) -> None:
    """Refuse outputs the model does not have (e.g. predict_proba of a regressor)."""
    for output in request.outputs:
        if output.name not in specs:
            why = " (only classifiers with predict_proba have it)" if output.name == PROBA else ""
            raise InvalidInput(
                f"this model has no output {output.name!r}{why}: its outputs are "
                + ", ".join(specs)
            )


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
    labels = np.asarray(result.predictions)
    if datatype == "BYTES":
        return labels
    return labels.astype(datatype_dtype(datatype), copy=False)


def datatype_dtype(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of a numeric or BOOL V2 datatype."""
    return np.dtype("?") if datatype == "BOOL" else np.dtype(_INPUT_DTYPES[datatype])


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
