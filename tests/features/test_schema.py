"""InputSchema.convert: the numpy fast path agrees with the value-by-value path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.errors import InvalidInput
from serving.features.schema import CATEGORICAL, NUMERIC, InputSchema


def _numeric(frame: bool = False) -> InputSchema:
    return InputSchema(3, ["a", "b", "c"], [NUMERIC] * 3, frame=frame)


def test_rows_become_a_float64_matrix() -> None:
    out = _numeric().convert([[1, 2.5, 3], [4, 5, 6]], may_have_bools=False)
    assert out.dtype == np.float64 and out.tolist() == [[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]]


def test_objects_are_ordered_by_feature_names() -> None:
    out = _numeric().convert([{"c": 3, "a": 1, "b": 2}])
    assert out.tolist() == [[1.0, 2.0, 3.0]]


def test_frame_models_get_a_dataframe_with_named_columns() -> None:
    out = _numeric(frame=True).convert([[1, 2, 3]])
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["a", "b", "c"]


def test_booleans_are_found_even_when_numpy_would_coerce_them() -> None:
    with pytest.raises(InvalidInput, match="boolean") as info:
        _numeric().convert([[1.5, True, 3.0]], may_have_bools=True)
    assert info.value.details == {"row": 0, "feature": "b", "column": 1}


def test_big_integers_inside_float64_range_are_accepted() -> None:
    out = _numeric().convert([[10**20, 1, 2]])
    assert out[0, 0] == 1e20


def test_single_feature_objects() -> None:
    schema = InputSchema(1, ["only"], [NUMERIC], frame=False)
    assert schema.convert([{"only": 2}]).tolist() == [[2.0]]


def test_mixed_schema_without_names_builds_an_object_matrix() -> None:
    schema = InputSchema(2, None, [NUMERIC, CATEGORICAL], frame=False)
    out = schema.convert([[1, "x"], [2.5, "y"]])
    assert out.dtype == object and out.tolist() == [[1.0, "x"], [2.5, "y"]]


def test_ten_thousand_rows_are_converted_in_one_go() -> None:
    rows = [[float(i), 1.0, 2.0] for i in range(10_000)]
    out = _numeric().convert(rows, may_have_bools=False)
    assert out.shape == (10_000, 3) and out[-1, 0] == 9999.0


def test_mismatched_names_and_kinds_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="must match"):
        InputSchema(2, ["a"], [NUMERIC, NUMERIC], frame=False)
