"""Decoding Open Inference Protocol (V2) requests: JSON, or a JSON header and binary tensors.

An infer request is JSON, or a JSON header (`Inference-Header-Content-Length` bytes) followed by
raw tensors: little-endian, row-major, in the order of the inputs. Numbers are decoded by numpy
in one go (`np.frombuffer` for binary tensors, never per value); the model's schema checks them.
A BYTES tensor (text) holds strings: JSON strings, or in binary each element's 4-byte
little-endian length and its UTF-8 bytes; it decodes to an object array of str.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from serving.errors import InvalidInput, MalformedRequest
from serving.protocols.strict_json import check_no_duplicate_keys, loads_lenient

PREDICT, PROBA, SCORES = "predict", "predict_proba", "scores"  # the outputs a request can ask for
BYTES = "BYTES"  # strings: the input of a text model
# Input datatypes a numeric model takes, as little-endian numpy dtypes (binary data is LE).
INPUT_DTYPES = {
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


def parse_index_request(body: bytes) -> bool:
    """The optional `{"ready": true}` filter of a repository index request."""
    payload = _loads(body) if body.strip() else {}
    if type(payload) is not dict:
        raise MalformedRequest("the repository index request must be a JSON object")
    return _flag(payload, "ready", "the repository index request")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[InputTensor, ...]  # in request order; which ones a model takes: v2_features
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
    if not payload["inputs"]:
        raise InvalidInput("the inference request has no input tensor")
    inputs = _decode_inputs(payload["inputs"], binary, _may_have_bools(header, payload))
    binary_default = _flag(payload["parameters"], "binary_data_output", "request parameter")
    outputs = tuple(_requested_output(o, binary_default) for o in payload["outputs"])
    return InferRequest(
        id=payload["id"],
        inputs=inputs,
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


def _decode_inputs(
    specs: list[dict[str, Any]], binary: memoryview, may_have_bools: bool
) -> tuple[InputTensor, ...]:
    """Each input's tensor; binary data follows the header in the order of the inputs (the last
    one with binary data is given all the bytes left, so a size that does not add up is named)."""
    tensors, at = [], 0
    with_binary = [i for i, spec in enumerate(specs) if "binary_data_size" in spec["parameters"]]
    for i, spec in enumerate(specs):
        size = spec["parameters"].get("binary_data_size")
        last = not with_binary or i >= with_binary[-1]
        end = len(binary) if last or type(size) is not int else at + max(size, 0)
        array = _decode_input(spec, binary[at:end], may_have_bools, last)
        tensors.append(InputTensor(spec["name"], spec["datatype"], array))
        at = end if size is not None else at
    return tuple(tensors)


def _decode_input(
    spec: dict[str, Any], binary: memoryview, may_have_bools: bool, last: bool = True
) -> np.ndarray:
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
    if binary and last:
        raise InvalidInput(
            f"{len(binary)} bytes follow the JSON header but {tensor.what} has no binary_data_size"
        )
    if spec["data"] is None:
        raise InvalidInput(f"{tensor.what} has neither data nor parameters.binary_data_size")
    return tensor.from_json(spec["data"], may_have_bools)


class _Tensor:
    """One input tensor's declared shape and datatype, and the decoding of its data."""

    def __init__(self, what: str, shape: list[int], datatype: str) -> None:
        if datatype not in INPUT_DTYPES and datatype != BYTES:
            raise InvalidInput(
                f"{what}: datatype {datatype!r} is not supported: use one of "
                + ", ".join([*INPUT_DTYPES, BYTES])
            )
        self.what, self.shape, self.datatype = what, shape, datatype
        self.dtype = np.dtype(INPUT_DTYPES.get(datatype, "O"))

    def from_binary(self, size: Any, binary: memoryview) -> np.ndarray:
        if self.datatype == BYTES:
            return self._strings_from_binary(size, binary)
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
        if self.datatype == BYTES:
            return self._strings_from_json(data)
        try:
            array = np.array(data)
        except (ValueError, TypeError, OverflowError):  # ragged nesting, huge integers
            raise InvalidInput(f"{self.what}: data is not a rectangular array of numbers") from None
        kinds = "iu" if self.dtype.kind in "iu" else "iuf"
        if array.dtype.kind == "O" and kinds == "iuf" and _numbers_and_nulls(array):
            array = array.astype(np.float64)  # null -> NaN; the schema says where it may be
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

    def _strings_from_json(self, data: Any) -> np.ndarray:
        values = data if type(data) is list else [data]
        while values and all(type(v) is list for v in values):  # nested rows: flatten
            values = [item for row in values for item in row]
        if not all(type(v) is str for v in values):
            raise InvalidInput(f"{self.what}: BYTES data must hold only strings")
        return self._shaped(values)

    def _strings_from_binary(self, size: Any, binary: memoryview) -> np.ndarray:
        if type(size) is not int or size != len(binary):
            raise InvalidInput(
                f"{self.what}: binary_data_size is {size!r} but {len(binary)} bytes "
                "follow the JSON header"
            )
        values, at, raw = [], 0, bytes(binary)
        try:
            while at < len(raw):
                (length,) = struct.unpack_from("<I", raw, at)
                values.append(raw[at + 4 : at + 4 + length].decode("utf-8"))
                at += 4 + length
        except (struct.error, UnicodeDecodeError):
            raise InvalidInput(
                f"{self.what}: BYTES data must be 4-byte lengths, each followed by that many "
                "bytes of UTF-8"
            ) from None
        if at != len(raw):
            raise InvalidInput(f"{self.what}: the last BYTES element is cut short")
        return self._shaped(values)

    def _shaped(self, values: list[str]) -> np.ndarray:
        if len(values) != math.prod(self.shape):
            raise InvalidInput(f"{self.what}: {len(values)} strings do not fit shape {self.shape}")
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(self.shape)


def _numbers_and_nulls(array: np.ndarray) -> bool:
    """An FP tensor's JSON data may hold null (a missing value) among its numbers."""
    values = array.ravel().tolist()
    return any(v is None for v in values) and all(
        v is None or type(v) is int or type(v) is float for v in values
    )


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
    """The JSON (header) of a V2 request; a key repeated in one object is refused."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = loads_lenient(raw, "the JSON header")
    check_no_duplicate_keys(raw, payload)
    return payload


def _flatten(messages: Any, prefix: str = "") -> str:
    """marshmallow's nested messages as one line: `inputs.0.shape: Not a valid list.`"""
    if isinstance(messages, dict):
        return "; ".join(_flatten(v, f"{prefix}{k}.") for k, v in messages.items())
    text = " ".join(messages) if isinstance(messages, list) else str(messages)
    return f"{prefix.rstrip('.')}: {text}"
