"""MLflow scoring-protocol bodies (JSON formats and CSV) turned into what `predict` takes. No Flask.

The JSON rules follow MLflow's scoring server: a JSON object with exactly one of the four input
fields; other top-level fields (`params` among them) are ignored. `dataframe_split` and the
column-dict form of `instances`/`inputs` carry column names: they are matched to the model's
feature names (any order), or taken by position for a model without names.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from serving.errors import InvalidInput, MalformedRequest
from serving.features.schema import BOOLEAN, CATEGORICAL, TEXT, InputSchema

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_REQUIRED = f"the input must be a JSON object with exactly one of the fields {', '.join(FORMATS)}"
_SPLIT_KEYS = {"columns", "data", "index"}


@dataclass(frozen=True)
class Table:
    """Rows (lists, or objects keyed by feature name), and their column names when given."""

    rows: list[Any]
    columns: list[Any] | None = None


def parse_json(payload: Any) -> Table:
    """The table an MLflow JSON body holds, or MalformedRequest naming what is wrong."""
    if type(payload) is not dict:
        raise MalformedRequest(f"{_REQUIRED}; received {_kind(payload)}")
    keys = [key for key in FORMATS if key in payload]
    if len(keys) != 1:
        raise MalformedRequest(f"{_REQUIRED}; received the fields {sorted(payload)}")
    key = keys[0]
    if key == "dataframe_split":
        return _split(payload[key])
    if key == "dataframe_records":
        if type(payload[key]) is not list:
            kind = _kind(payload[key])
            raise MalformedRequest(f"dataframe_records must be a list of records, not {kind}")
        return Table(payload[key])
    return _tensor_input(key, payload[key])


def _split(value: Any) -> Table:
    if type(value) is not dict or "data" not in value or not set(value) <= _SPLIT_KEYS:
        raise MalformedRequest(
            "dataframe_split must be an object with a 'data' field and optionally 'columns' "
            f"and 'index' (what DataFrame.to_dict(orient='split') gives); received {_fields(value)}"
        )
    data, columns, index = value["data"], value.get("columns"), value.get("index")
    if type(data) is not list:
        raise MalformedRequest(f"dataframe_split 'data' must be a list of rows, not {_kind(data)}")
    if columns is not None and (
        type(columns) is not list or not all(type(c) in (str, int) for c in columns)
    ):
        raise MalformedRequest("dataframe_split 'columns' must be a list of column names")
    if index is not None and (type(index) is not list or len(index) != len(data)):
        raise MalformedRequest("dataframe_split 'index' must be a list with one label per row")
    if columns == list(range(len(columns or ()))):
        columns = None  # an unnamed DataFrame's default labels 0..n-1: take the data by position
    if columns is not None:
        _check_widths(data, len(columns))
    return Table(data, columns)


def _tensor_input(key: str, value: Any) -> Table:
    """`instances`/`inputs`: a list of rows or objects, or an object mapping column -> values."""
    if type(value) is list:
        return Table(value)
    if type(value) is not dict or not value:
        raise MalformedRequest(
            f"{key} must be a list of rows or objects, or an object mapping each column to a "
            f"list of values; received {_kind(value)}"
        )
    columns = list(value)
    lengths = {len(v) if type(v) is list else -1 for v in value.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise MalformedRequest(f"{key}: every column must be a list of values of the same length")
    return Table(list(zip(*value.values())), columns)


def to_instances(table: Table, schema: InputSchema) -> list[Any]:
    """The rows in the model's feature order (objects and unnamed rows go as they are)."""
    if not table.rows:
        raise InvalidInput("the request holds no rows to score")
    if table.columns is None or schema.names is None:
        return table.rows
    order = column_order(table.columns, schema)
    if order == list(range(schema.n_features)):
        return table.rows
    pick = itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],)
    return [pick(row) for row in table.rows]


def column_order(columns: Sequence[Any], schema: InputSchema) -> list[int]:
    """Where each model feature sits in `columns`; InvalidInput for an unknown or missing one."""
    names = schema.labels
    position = {column: i for i, column in enumerate(columns)}
    if len(position) != len(columns):
        duplicate = next(c for i, c in enumerate(columns) if columns.index(c) != i)
        raise InvalidInput(f"duplicate column {duplicate!r}", {"column": duplicate})
    known = set(names)
    unknown = [c for c in columns if c not in known]
    if unknown:
        hint = " (write the CSV with index=False)" if str(unknown[0]).startswith("Unnamed") else ""
        raise InvalidInput(
            f"unknown column {unknown[0]!r}{hint}; the model takes {names}",
            {"column": unknown[0], "expected": names},
        )
    missing = [name for name in names if name not in position]
    if missing:
        raise InvalidInput(f"missing column {missing[0]!r}", {"missing": missing})
    return [position[name] for name in names]


def read_csv(body: bytes, schema: InputSchema) -> pd.DataFrame:
    """A CSV body with a header row, columns in the model's order (by name, or by position)."""
    # Categorical columns stay text even when their values look like numbers ("1", "2").
    text = [n for n, k in zip(schema.names or (), schema.kinds) if k in (CATEGORICAL, TEXT)]
    try:
        frame = pd.read_csv(
            io.BytesIO(body), dtype=dict.fromkeys(text, str), encoding="utf-8", **_na_rules(schema)
        )
    except ValueError as exc:  # parser errors, an empty body, bytes that are not UTF-8
        raise MalformedRequest(f"cannot read the body as CSV with a header row: {exc}") from None
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        raise MalformedRequest("a CSV row has more fields than the header")
    if frame.empty:
        raise InvalidInput("the request holds no rows to score")
    if schema.names is not None:
        return frame.iloc[:, column_order([str(c) for c in frame.columns], schema)]
    if frame.shape[1] != schema.n_features:
        raise InvalidInput(
            f"expected {schema.n_features} columns, got {frame.shape[1]}",
            {"expected": schema.n_features, "got": frame.shape[1]},
        )
    return frame


def _na_rules(schema: InputSchema) -> dict[str, Any]:
    """A text column's "NA", "None" or empty field is text ("" for an empty one), not missing."""
    words = [n for n, k in zip(schema.names or (), schema.kinds) if k == TEXT]
    if not words:
        return {}
    others = [n for n in schema.names or () if n not in words]
    return {"keep_default_na": False, "na_values": dict.fromkeys(others, _NA_WORDS)}


# pandas' default missing-value words, for the columns that are not text.
_NA_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"]
_NA_WORDS += ["1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def csv_matrix(frame: pd.DataFrame, schema: InputSchema) -> np.ndarray:
    """A numeric model's CSV as a float matrix; InvalidInput naming the first non-number."""
    for j, column in enumerate(frame.columns):
        values = frame.iloc[:, j]
        if values.dtype.kind == "b" and schema.kinds[j] == BOOLEAN:
            continue  # True/False/true/false: 1.0/0.0, as the model was fitted
        if values.dtype.kind not in "fiu":
            i = _first_non_number(values.tolist())
            shown = values.iloc[i]
            raise InvalidInput(
                f"instance {i}, feature {schema.labels[j]!r}: expected a number, "
                f"got {_shown(shown)}",
                {"row": i, "feature": schema.labels[j], "column": str(column)},
            )
    return frame.to_numpy(dtype=np.float64)


def _shown(value: Any) -> str:
    """A CSV value as its text: never a numpy repr such as np.True_."""
    if isinstance(value, (bool, np.bool_)):
        return repr(str(bool(value)))
    return repr(value.item() if isinstance(value, np.generic) else value)


def csv_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """A mixed model's CSV as rows of Python values, for the schema's per-column checks."""
    return frame.to_numpy(dtype=object).tolist()


def _check_widths(rows: Sequence[Any], width: int) -> None:
    for i, row in enumerate(rows):
        if type(row) not in (list, tuple) or len(row) != width:
            raise InvalidInput(
                f"row {i}: expected a list of {width} values, one per column, got {_kind(row)}"
                + (f" of {len(row)}" if type(row) in (list, tuple) else ""),
                {"row": i},
            )


def _first_non_number(values: list[Any]) -> int:
    for i, value in enumerate(values):
        if type(value) is bool:
            return i
        try:
            float(value)
        except (TypeError, ValueError):
            return i
    return 0


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _fields(value: Any) -> str:
    return f"the fields {sorted(value)}" if type(value) is dict else _kind(value)
