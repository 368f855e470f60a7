"""The request protocols of the contestants: where a cell posts, what it posts, what comes back.

- native: ours, `POST /v1/models/<m>/predict` with `{"instances": [[...], ...]}`
- v2: MLServer, the Open Inference (V2) protocol, `POST /v2/models/<m>/infer` with one FP64
  tensor of shape [rows, features]
- mlflow: `mlflow models serve`, `POST /invocations` (one model per server) with
  `{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Rows = list[list[float]]


def native_body(rows: Rows, columns: list[str]) -> dict[str, Any]:
    return {"instances": rows}


def native_predictions(payload: dict[str, Any]) -> list[Any]:
    return list(payload["predictions"])


def v2_body(rows: Rows, columns: list[str]) -> dict[str, Any]:
    width = len(rows[0]) if rows else len(columns)
    flat = [value for row in rows for value in row]
    tensor = {"name": "input-0", "shape": [len(rows), width], "datatype": "FP64", "data": flat}
    return {"inputs": [tensor]}


def v2_predictions(payload: dict[str, Any]) -> list[Any]:
    """The first output tensor, one value per row (shape [rows] or [rows, 1])."""
    output = payload["outputs"][0]
    shape, data = output["shape"], output["data"]
    if any(dim != 1 for dim in shape[1:]) or len(data) != shape[0]:
        raise ValueError(f"expected one prediction per row, got shape {shape}")
    return list(data)


def mlflow_body(rows: Rows, columns: list[str]) -> dict[str, Any]:
    return {"dataframe_split": {"columns": columns, "data": rows}}


def mlflow_predictions(payload: dict[str, Any]) -> list[Any]:
    return list(payload["predictions"])


@dataclass(frozen=True)
class Protocol:
    name: str
    path_template: str  # "{model}" is replaced by the model's name
    build: Callable[[Rows, list[str]], dict[str, Any]]
    parse: Callable[[dict[str, Any]], list[Any]]

    def path(self, model: str) -> str:
        return self.path_template.format(model=model)

    def body(self, rows: Rows, columns: list[str]) -> bytes:
        return json.dumps(self.build(rows, columns)).encode()

    def predictions(self, payload: bytes) -> list[Any]:
        """The predictions in a response body; ValueError if it is not one of this protocol's."""
        try:
            return self.parse(json.loads(payload))
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"not a {self.name} response: {exc!r}") from exc


NATIVE = Protocol("native", "/v1/models/{model}/predict", native_body, native_predictions)
V2 = Protocol("v2", "/v2/models/{model}/infer", v2_body, v2_predictions)
MLFLOW = Protocol("mlflow", "/invocations", mlflow_body, mlflow_predictions)
ALL = (NATIVE, V2, MLFLOW)


def write_bodies(
    workdir: Path, rows: dict[int, Rows], columns: list[str]
) -> dict[tuple[str, int], Path]:
    """One body file per (protocol, row count): {(protocol name, rows): path}."""
    out = {}
    for protocol in ALL:
        for count, values in rows.items():
            path = workdir / f"body-{protocol.name}-{count}.json"
            path.write_bytes(protocol.body(values, columns))
            out[(protocol.name, count)] = path
    return out
