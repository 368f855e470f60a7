"""Which V2 input tensors a model takes, and the rows they hold.

A model whose features are all numbers (or booleans, fed as 1.0/0.0) takes one tensor `input-0`
of shape [N, n_features]; a bare text model one BYTES tensor of N strings. A model with
categorical or text features among others (a ColumnTransformer over a DataFrame) takes one
tensor per feature, named after it, of shape [N] or [N, 1]: BYTES for a categorical or text
feature, a numeric datatype for the others (JSON null, or NaN, where the feature is nullable).
`GET /v2/models/<name>` lists exactly these (`input_tensors`), and `/infer` takes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import InvalidInput
from serving.features.schema import STRING_KINDS, InputSchema
from serving.protocols.v2_request import BYTES, InferRequest, InputTensor

INPUT_NAME = "input-0"
FEATURE_SHAPE = (-1, 1)


def per_feature(schema: InputSchema) -> bool:
    """True when the model takes one tensor per feature (it has string features among others)."""
    return not schema.numeric_only and not schema.vector


def input_tensors(schema: InputSchema) -> list[dict[str, Any]]:
    """The input tensors of the model's metadata: name, datatype, shape, and what each holds."""
    if schema.vector:
        return [_tensor(INPUT_NAME, BYTES, FEATURE_SHAPE, {"features": schema.describe()})]
    if not per_feature(schema):
        shape = (-1, schema.n_features)
        return [_tensor(INPUT_NAME, "FP64", shape, {"features": schema.describe()})]
    return [
        _tensor(label, _datatype(kind), FEATURE_SHAPE, {"kind": kind, "nullable": nullable})
        for label, kind, nullable in zip(schema.labels, schema.kinds, schema.nullable)
    ]


def model_rows(request: InferRequest, schema: InputSchema) -> tuple[np.ndarray | None, Any]:
    """(array, None) for a model that takes one tensor, (None, rows) for one per feature."""
    if per_feature(schema):
        return None, _rows(request.inputs, schema)
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"expected exactly one input tensor of shape [N, {schema.n_features}], "
            f"got {len(request.inputs)}"
        )
    return request.inputs[0].array, None


def _rows(tensors: tuple[InputTensor, ...], schema: InputSchema) -> list[tuple[Any, ...]]:
    """One tuple per row, the features in the model's order, from one tensor per feature."""
    by_name = _by_name(tensors, schema)
    columns, length = [], None
    for label, kind in zip(schema.labels, schema.kinds):
        tensor = by_name[label]
        what = f"input {label!r}"
        if (tensor.datatype == BYTES) != (kind in STRING_KINDS):
            expected = BYTES if kind in STRING_KINDS else "a numeric datatype (FP64)"
            raise InvalidInput(f"{what}: a {kind} feature takes {expected}, got {tensor.datatype}")
        array = tensor.array
        if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
            raise InvalidInput(f"{what}: expected shape [N] or [N, 1], got {list(array.shape)}")
        if length is not None and len(array) != length:
            raise InvalidInput(
                f"{what}: {len(array)} rows, but input {schema.labels[0]!r} has {length}"
            )
        length = len(array)
        columns.append(array.ravel().tolist())
    return list(zip(*columns))


def _by_name(tensors: tuple[InputTensor, ...], schema: InputSchema) -> dict[str, InputTensor]:
    by_name: dict[str, InputTensor] = {}
    for tensor in tensors:
        if tensor.name in by_name:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        by_name[tensor.name] = tensor
    unknown = [name for name in by_name if name not in schema.labels]
    missing = [label for label in schema.labels if label not in by_name]
    if unknown or missing:
        got = f"unknown input {unknown[0]!r}" if unknown else f"no input {missing[0]!r}"
        raise InvalidInput(
            f"{got}: this model takes one tensor per feature (BYTES for categorical and text "
            f"features), named {', '.join(schema.labels)}; GET /v2/models/<name> lists them",
            {"expected": schema.labels, "missing": missing, "unknown": unknown},
        )
    return by_name


def _datatype(kind: str) -> str:
    return BYTES if kind in STRING_KINDS else "FP64"


def _tensor(name: str, datatype: str, shape: tuple[int, ...], parameters: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape), "parameters": parameters}
