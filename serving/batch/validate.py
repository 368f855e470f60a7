"""Checking one decoded chunk against the model's InputSchema, with numpy, row by row cheaply.

Every bad row gets its first problem (reason, feature, message): a missing feature or value, a
wrong type, a value that is not finite (a null, empty or NaN value passes, as NaN, for a
feature the schema marks nullable; a boolean feature takes booleans, as 1.0/0.0). The rows
that pass become the model input, in the
form the model was fitted on (an array, a DataFrame, an object array).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from serving.batch.files import ABSENT, Decoded, Field
from serving.features.schema import BOOLEAN, STRING_KINDS, InputSchema

Problem = tuple[str, str | None, str]  # reason, feature (or None), message


def validate(decoded: Decoded, schema: InputSchema) -> tuple[Any, np.ndarray, dict[int, Problem]]:
    """The model input for the rows that pass, their mask, and the first problem of the others."""
    problems: dict[int, Problem] = {
        i: ("malformed_row", None, m) for i, m in decoded.broken.items()
    }
    columns = [
        _numbers(column, label, decoded, problems, (nullable, kind == BOOLEAN))
        if kind not in STRING_KINDS
        else _strings(column, label, decoded, problems, kind)
        for column, kind, label, nullable in zip(
            decoded.fields, schema.kinds, schema.labels, schema.nullable
        )
    ]
    ok = np.ones(decoded.rows, dtype=bool)
    if problems:
        ok[list(problems)] = False
    every = bool(ok.all())
    if schema.numeric_only:
        matrix = np.empty((decoded.rows, schema.n_features))
        for j, column in enumerate(columns):
            matrix[:, j] = column
        return schema.to_model_input(matrix if every else matrix[ok]), ok, problems
    kept = [c if every else c[ok] for c in columns]
    return schema.from_columns(kept), ok, problems


def _numbers(
    column: Field,
    label: str,
    decoded: Decoded,
    problems: dict[int, Problem],
    flags: tuple[bool, bool],
) -> Any:
    """float64 values (NaN where a row is bad or, if nullable, missing); each bad row's first
    problem into `problems`. `flags`: (nullable, boolean)."""
    nullable, boolean = flags
    values = column.values
    found: dict[int, Problem] = {}
    if values.dtype.kind in "fiu" or (values.dtype.kind == "b" and boolean):
        floats = values.astype(np.float64, copy=False)
    elif values.dtype.kind == "b":
        floats = np.full(len(values), np.nan)
        found = {i: _wrong(label, "a boolean") for i in range(len(values))}
    elif decoded.text_numbers:
        floats = _parse_text(values, label, found, boolean)
    else:
        floats = _coerce_objects(values.astype(object, copy=False), label, found, boolean)
    bad = ~np.isfinite(floats)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            if nullable and _missing(floats[i], found.get(i)):
                continue
            if i not in problems:
                problems[i] = found.get(i) or _not_finite(floats[i], column, i, decoded, label)
    return floats


def _parse_text(
    values: np.ndarray, label: str, found: dict[int, Problem], boolean: bool
) -> np.ndarray:
    """CSV: a column with a non-number in it arrives as text; parse the numbers in it (and
    True/False/true/false for a boolean feature)."""
    series = pd.Series(values, copy=False)
    if boolean:
        series = series.replace(_BOOLEAN_TEXT)
    parsed = pd.to_numeric(series, errors="coerce")
    floats = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    for i in np.flatnonzero(np.isnan(floats)).tolist():
        if isinstance(values[i], str):
            found[i] = _wrong(label, _describe(values[i]))
    return floats


def _coerce_objects(
    values: np.ndarray, label: str, found: dict[int, Problem], boolean: bool
) -> np.ndarray:
    """JSON values: numbers (and booleans for a boolean feature) pass; strings, other
    booleans, nulls and absent keys are named."""
    if pd.api.types.infer_dtype(values, skipna=False) in (
        "floating",
        "integer",
        "mixed-integer-float",
    ):
        try:
            return values.astype(np.float64)
        except OverflowError:
            pass
    floats = np.full(len(values), np.nan)
    for i, value in enumerate(values.tolist()):
        kind = type(value)
        if boolean and kind is bool:
            floats[i] = 1.0 if value else 0.0
        elif kind is float or kind is int:
            try:
                floats[i] = value
            except OverflowError:
                found[i] = _wrong(label, "an integer outside the float64 range")
        elif value is ABSENT:
            found[i] = ("missing_feature", label, f"feature {label!r} is missing")
        elif value is None:
            found[i] = ("missing_value", label, f"feature {label!r}: expected a number, got null")
        else:
            found[i] = _wrong(label, _describe(value))
    return floats


_BOOLEAN_TEXT = {"True": 1.0, "true": 1.0, "TRUE": 1.0, "False": 0.0, "false": 0.0, "FALSE": 0.0}


def _missing(value: float, problem: Problem | None) -> bool:
    """A null, empty or NaN value (not a wrong type, not an absent key, not an infinity)."""
    if problem is not None:
        return problem[0] == "missing_value"
    return bool(np.isnan(value))


def _not_finite(value: float, column: Field, i: int, decoded: Decoded, label: str) -> Problem:
    if column.nulls is not None and column.nulls[i]:
        return "missing_value", label, f"feature {label!r}: expected a number, got null"
    if np.isnan(value) and decoded.nan_is_missing:
        return "missing_value", label, f"feature {label!r}: missing value (empty or NA)"
    shown = "NaN" if np.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return "not_finite", label, f"feature {label!r}: expected a finite number, got {shown}"


def _strings(
    column: Field, label: str, decoded: Decoded, problems: dict[int, Problem], kind: str
) -> Any:
    """Categorical and text values: strings pass; anything else is named (bad rows are dropped
    later)."""
    values = column.values.astype(object, copy=False)
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values
    for i, value in enumerate(values.tolist()):
        if type(value) is str or i in problems:
            continue
        if value is ABSENT:
            problems[i] = ("missing_feature", label, f"feature {label!r} is missing")
        elif value is None or (decoded.nan_is_missing and value != value):
            problems[i] = ("missing_value", label, f"feature {label!r}: missing value")
        else:
            problems[i] = _wrong(label, _describe(value), f"a string ({kind} feature)")
    return values


def _wrong(label: str, got: str, expected: str = "a finite number") -> Problem:
    return "wrong_type", label, f"feature {label!r}: expected {expected}, got {got}"


def _describe(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return f"a string ({value if len(value) <= 40 else value[:37] + '...'!r})"
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, (int, float, np.number)):
        return "a number"
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")
