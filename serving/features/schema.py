"""A model's input schema, and the conversion of JSON instances into what `predict` takes.

Numbers are checked with numpy on the whole batch at once; only a batch that fails the fast
checks is walked value by value, to name the first bad row and feature. A numeric feature the
model answers missing values for (`nullable`, probed at register) takes JSON null or NaN, fed
to the model as NaN; that check runs only when the fast one fails, so it costs nothing otherwise.
A boolean feature (a bool column of the reference data) takes true/false, fed as 1.0/0.0 as
scikit-learn fed it when fitting. A text feature (a column a fitted vectorizer reads) takes
strings: a model with one text feature and no frame (a bare vectorizer Pipeline) is fed a 1-D
object array, as it was fitted; its instances may be bare strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from serving.errors import InvalidInput

NUMERIC = "numeric"
CATEGORICAL = "categorical"
BOOLEAN = "boolean"
TEXT = "text"
STRING_KINDS = (CATEGORICAL, TEXT)  # fed to the model as strings
NUMERIC_KINDS = (NUMERIC, BOOLEAN)  # fed to the model as float64
_NUMBER_TYPES = (int, float)


class InputSchema:
    """What one model version takes: feature count, names, numeric/categorical kinds, and
    which numeric features may be missing (null or NaN, fed to the model as NaN).

    `names` are the names users send; `model_names` the columns of the DataFrame fed to the
    model, when the library renamed them at fit (LightGBM: `mean radius` -> `mean_radius`).
    """

    def __init__(
        self,
        n_features: int,
        names: Sequence[str] | None,
        kinds: Sequence[str],
        frame: bool,
        nullable: Sequence[bool] | None = None,
        model_names: Sequence[str] | None = None,
    ) -> None:
        if len(kinds) != n_features or (names is not None and len(names) != n_features):
            raise ValueError("feature names and kinds must match n_features")
        if model_names is not None and (names is None or len(model_names) != n_features):
            raise ValueError("the model's feature names must match the feature names")
        flags = [bool(x) for x in nullable] if nullable is not None else [False] * n_features
        if len(flags) != n_features:
            raise ValueError("nullable flags must match n_features")
        self.nullable = [flag and kind == NUMERIC for flag, kind in zip(flags, kinds)]
        self._nullable_mask = np.array(self.nullable, dtype=bool)
        self.n_features = n_features
        self.names = list(names) if names is not None else None
        self.model_names = list(model_names) if model_names is not None else self.names
        self.kinds = list(kinds)
        self.frame = frame and self.names is not None
        self.labels = self.names or [f"[{i}]" for i in range(n_features)]
        self.numeric_only = all(kind in NUMERIC_KINDS for kind in self.kinds)
        # A bare text model: one text feature fed as a 1-D array of strings.
        self.vector = not self.frame and self.kinds == [TEXT]
        self._booleans = [kind == BOOLEAN for kind in self.kinds]
        self._getter = _row_getter(self.names) if self.names else None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> InputSchema:
        features = metadata["features"]
        names = metadata.get("feature_names")
        return cls(
            n_features=metadata["n_features"],
            names=names,
            kinds=[feature["kind"] for feature in features],
            frame=bool(metadata.get("frame_input")) and names is not None,
            nullable=[bool(feature.get("nullable", False)) for feature in features],
            model_names=metadata.get("model_feature_names") if names is not None else None,
        )

    def without_frame(self) -> InputSchema:
        """The same schema feeding the model a bare float64 array instead of a DataFrame."""
        return InputSchema(
            self.n_features, self.names, self.kinds, False, self.nullable, self.model_names
        )

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": label, "kind": kind, "nullable": flag}
            for label, kind, flag in zip(self.labels, self.kinds, self.nullable)
        ]

    def convert(self, instances: list[Any], may_have_bools: bool = True) -> Any:
        """Turn JSON instances (rows or objects) into the model's input, or raise InvalidInput.

        `may_have_bools=False` is a promise from the caller (who saw no `true`/`false` token in
        the body for them) that lets numeric batches skip the per-value boolean scan.
        """
        if instances and type(instances[0]) is dict:
            rows: Sequence[Sequence[Any]] = self._rows_from_objects(instances)
        elif self.vector and instances and type(instances[0]) not in (list, tuple):
            rows = [(text,) for text in instances]  # ["some text", ...]
        else:
            rows = instances
        if self.numeric_only:
            return self.to_model_input(self._numeric(rows, may_have_bools))
        return self._mixed(rows)

    def convert_array(self, array: np.ndarray) -> Any:
        """Validate an already numeric 2-D array (binary tensors, CSV) and wrap it for the model;
        a bare text model takes an array of strings ([N] or [N, 1], V2 BYTES tensors)."""
        if self.vector:
            if array.dtype.kind in "OUS" and (array.ndim == 1 or array.shape[1:] == (1,)):
                return self._mixed([(v,) for v in array.ravel().tolist()])
            got = "strings" if array.dtype.kind in "OUS" else "numbers"
            raise InvalidInput(
                "this model takes one text feature: expected strings of shape [N] or [N, 1], "
                f"got {got} of shape {list(array.shape)}",
                {"text": self.labels},
            )
        if not self.numeric_only:
            raise InvalidInput(
                "this model has categorical features: send instances as JSON rows or objects",
                {"categorical": [n for n, k in zip(self.labels, self.kinds) if k in STRING_KINDS]},
            )
        if array.ndim != 2 or array.shape[1] != self.n_features:
            raise InvalidInput(
                f"expected shape [N, {self.n_features}], got {list(array.shape)}",
                {"expected": [-1, self.n_features], "got": list(array.shape)},
            )
        if array.dtype.kind not in "fiu":
            raise InvalidInput(f"expected numbers, got dtype {array.dtype}")
        matrix = np.asarray(array, dtype=np.float64)
        if not np.isfinite(matrix).all():
            self._check_finite(matrix)
        return self.to_model_input(matrix)

    def to_model_input(self, matrix: np.ndarray) -> Any:
        if self.frame:
            return pd.DataFrame(matrix, columns=self.model_names, copy=False)
        return matrix

    def to_model_frame(self, columns: Sequence[Any]) -> pd.DataFrame:
        """One array per feature, in order, as the DataFrame the model was fitted on."""
        return pd.DataFrame(dict(zip(self.model_names or (), columns)))

    def _rows_from_objects(self, objects: list[Any]) -> list[tuple[Any, ...]]:
        if self._getter is None:
            raise InvalidInput(
                "this model has no feature names: send each instance as a list of "
                f"{self.n_features} values",
                {"row": 0},
            )
        try:
            rows = list(map(self._getter, objects))
            exact = sum(map(len, objects)) == self.n_features * len(objects)
        except (KeyError, TypeError, IndexError):
            exact = False
        if not exact:
            self._explain_objects(objects)
        return rows

    def _explain_objects(self, objects: list[Any]) -> None:
        expected = set(self.labels)
        for i, obj in enumerate(objects):
            if type(obj) is not dict:
                raise InvalidInput(
                    f"instance {i}: expected an object like instance 0, got {_kind(obj)}",
                    {"row": i},
                )
            unknown = sorted(set(obj) - expected)
            if unknown:
                raise InvalidInput(
                    f"instance {i}: unknown feature {unknown[0]!r}",
                    {"row": i, "feature": unknown[0], "expected": self.labels},
                )
            missing = [name for name in self.labels if name not in obj]
            if missing:
                raise InvalidInput(
                    f"instance {i}: missing feature {missing[0]!r}",
                    {"row": i, "feature": missing[0], "missing": missing},
                )
        raise InvalidInput("instances do not match the model's features")  # pragma: no cover

    def _numeric(self, rows: Sequence[Sequence[Any]], may_have_bools: bool) -> np.ndarray:
        try:
            matrix = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            return self._numeric_slow(rows)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features or matrix.dtype.kind not in "fiu":
            return self._numeric_slow(rows)
        if may_have_bools and any(type(v) is bool for row in rows for v in row):
            return self._numeric_slow(rows)
        if matrix.dtype.kind != "f" or matrix.dtype != np.float64:
            matrix = matrix.astype(np.float64)
        if not np.isfinite(matrix).all():
            self._check_finite(matrix)
        return matrix

    def _check_finite(self, matrix: np.ndarray) -> None:
        """Raise for the first value that is not finite, unless it is NaN in a nullable column."""
        bad = ~np.isfinite(matrix)
        if self._nullable_mask.any():
            bad &= ~(np.isnan(matrix) & self._nullable_mask)
        if bad.any():
            row, col = (int(x) for x in np.argwhere(bad)[0])
            self._bad_value(row, col, float(matrix[row, col]), "a finite number")

    def _numeric_slow(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Walk the batch to find the first bad value; convert it if nothing is wrong."""
        out = np.empty((len(rows), self.n_features), dtype=np.float64)
        for i, row in enumerate(rows):
            self._check_row(i, row)
            for j, value in enumerate(row):
                out[i, j] = self._number(i, j, value)
        return out

    def _mixed(self, rows: Sequence[Sequence[Any]]) -> Any:
        for i, row in enumerate(rows):
            self._check_row(i, row)
        columns: dict[str, Any] = {}
        for j, (label, kind, column) in enumerate(zip(self.labels, self.kinds, zip(*rows))):
            if kind not in STRING_KINDS:
                if not all(type(v) in _NUMBER_TYPES for v in column) or not _all_finite(column):
                    column = tuple(self._number(i, j, value) for i, value in enumerate(column))
                columns[label] = np.array(column, dtype=np.float64)
            else:
                if not all(type(v) is str for v in column):
                    i = next(i for i, v in enumerate(column) if type(v) is not str)
                    self._bad_value(i, j, column[i], f"a string ({kind} feature)")
                columns[label] = np.array(column, dtype=object)
        return self.from_columns(list(columns.values()))

    def from_columns(self, columns: list[Any]) -> Any:
        """The model input from one validated array per feature, in order."""
        if self.frame:
            return self.to_model_frame(columns)
        if self.vector:
            return columns[0]
        return np.column_stack(columns).astype(object)

    def _check_row(self, i: int, row: Any) -> None:
        if type(row) not in (list, tuple):
            raise InvalidInput(
                f"instance {i}: expected a list of {self.n_features} values"
                + (" or an object keyed by feature name" if self.names else "")
                + f", got {_kind(row)}",
                {"row": i},
            )
        if len(row) != self.n_features:
            raise InvalidInput(
                f"instance {i}: expected {self.n_features} features, got {len(row)}",
                {"row": i, "expected": self.n_features, "got": len(row)},
            )

    def _number(self, i: int, j: int, value: Any) -> float:
        kind = type(value)
        if (kind is bool or kind is np.bool_) and self._booleans[j]:
            return 1.0 if value else 0.0
        if kind is float:
            if math.isfinite(value):
                return value
        elif kind is int:
            try:
                return float(value)
            except OverflowError:
                pass
        if self.nullable[j] and (value is None or (kind is float and math.isnan(value))):
            return math.nan
        self._bad_value(i, j, value, "a finite number")
        raise AssertionError("unreachable")  # pragma: no cover

    def _bad_value(self, i: int, j: int, value: Any, expected: str) -> None:
        label = self.labels[j]
        if self._booleans[j] and expected == "a finite number":
            expected = "true, false or a number"
        elif self.nullable[j] and expected == "a finite number":
            expected = "a finite number or null"
        raise InvalidInput(
            f"instance {i}, feature {label!r}: expected {expected}, got {_describe(value)}",
            {"row": i, "feature": label, "column": j},
        )


def _row_getter(names: list[str]) -> Any:
    if len(names) == 1:
        only = names[0]
        return lambda obj: (obj[only],)
    return itemgetter(*names)


def _all_finite(column: Sequence[Any]) -> bool:
    try:
        return bool(np.isfinite(np.array(column, dtype=np.float64)).all())
    except OverflowError:
        return False


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    kinds[np.bool_] = "a boolean"
    return kinds.get(type(value), "null" if value is None else "a number")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool or type(value) is np.bool_:
        return f"a boolean ({'true' if value else 'false'})"
    if type(value) is str:
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if type(value) is float:
        if math.isfinite(value):
            return f"a number ({value!r})"
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is int:
        try:
            float(value)
        except OverflowError:
            return "an integer outside the float64 range"
        return f"a number ({value})" if abs(value) < 10**15 else "a number"
    return _kind(value)
