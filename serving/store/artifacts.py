"""Model artifacts at registration: read a candidate file and describe the fitted estimator.

Loading a stored version for serving (sha256 and scikit-learn version checks) is
`serving.runtime.artifacts`.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import is_classifier, is_outlier_detector, is_regressor
from threadpoolctl import threadpool_limits

from serving.errors import StoreError
from serving.features import text
from serving.features.names import training_names
from serving.features.schema import BOOLEAN, CATEGORICAL, NUMERIC, TEXT, InputSchema

ARTIFACT_NAME = "model.joblib"
ACCEPTED_SUFFIXES = (".joblib", ".pkl", ".pickle")


def read_artifact(path: Path) -> Any:
    """Unpickle a candidate artifact at registration, with a clear error if it is not a model."""
    if path.suffix.lower() not in ACCEPTED_SUFFIXES:
        raise StoreError(
            f"{path.name}: unsupported artifact type; "
            f"expected one of {', '.join(ACCEPTED_SUFFIXES)} or .skops"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = joblib.load(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except Exception as exc:  # any unpickling failure is the artifact's fault
        raise StoreError(f"{path.name}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not callable(getattr(model, "predict", None)):
        raise StoreError(f"{path.name}: {type(model).__name__} has no predict method")
    return model


def describe_model(
    model: Any,
    reference: pd.DataFrame | None,
    categorical: set[str] | None = None,
    nullable: dict[str, bool] | None = None,
    texts: set[str] | None = None,
) -> dict[str, Any]:
    """The metadata fields that come from the fitted model and its reference data.

    `nullable` overrides the probe of which numeric features the model answers NaN for;
    `texts` names text features (for a model without feature names: its one text feature).
    """
    model_names = _feature_names(model)
    bare = model_names is None and (bool(texts) or text.bare_vectorizer(model) is not None)
    names = [_text_name(reference, texts)] if bare else _user_names(model_names, reference)
    n_features = 1 if bare else _n_features(model, names, reference)
    kinds = _feature_kinds(model, names, n_features, reference, categorical or set())
    kinds = _marked_text(kinds, names, texts or set(), bare)
    frame = names is not None and not bare  # a bare text model takes a 1-D array of strings
    schema = InputSchema(n_features, names, kinds, frame, model_names=model_names)
    sample = _sample_rows(schema, reference, model)
    answer = _smoke_test(model, schema, sample)
    flags = _nullable_flags(model, schema, sample, nullable or {})
    schema = InputSchema(n_features, names, kinds, frame, flags, model_names)
    task = "classifier" if is_classifier(model) else "regressor" if is_regressor(model) else "other"
    meta: dict[str, Any] = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "task": task,
        **_output_fields(model, task, answer),
        **_score_fields(model, schema, sample, answer),
        "n_features": n_features,
        "feature_names": names,
        "model_feature_names": model_names if model_names != names else None,
        "features": schema.describe(),
        "frame_input": frame,
        "sample_input": sample,
        "python_version": platform.python_version(),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
    }
    if reference is not None:
        from serving.store.reference import reference_statistics

        columns = _reference_columns(reference, names, n_features)
        meta["reference_stats"] = reference_statistics(model, schema, columns, task)
    else:
        meta["reference_stats"] = None  # drift cannot be measured for this version
    return meta


def _feature_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    return [str(name) for name in names] if names is not None else None


def _user_names(model_names: list[str] | None, reference: pd.DataFrame | None) -> list[str] | None:
    """The reference data's names for features the library renamed (LightGBM: `mean radius`
    became `mean_radius`), in the model's order; else the model's own names."""
    if model_names is None or reference is None:
        return model_names
    return training_names(model_names, list(reference.columns)) or model_names


def _text_name(reference: pd.DataFrame | None, texts: set[str] | None) -> str:
    """A bare text model's one feature: --text, else the reference data's only column."""
    if texts:
        if len(texts) > 1:
            raise StoreError(f"--text: this model takes one text feature, not {len(texts)}")
        return next(iter(texts))
    if reference is not None and reference.shape[1] == 1:
        return str(reference.columns[0])
    return text.DEFAULT_NAME


def _marked_text(
    kinds: list[str], names: list[str] | None, texts: set[str], bare: bool
) -> list[str]:
    unknown = texts - set(names or ())
    if unknown:
        raise StoreError(f"--text names unknown features: {', '.join(sorted(unknown))}")
    return [
        TEXT if bare or name in texts else kind for kind, name in zip(kinds, names or [])
    ] or kinds


def _n_features(model: Any, names: list[str] | None, reference: pd.DataFrame | None) -> int:
    if names is not None:
        return len(names)
    n = getattr(model, "n_features_in_", None)
    if n is not None:
        return int(n)
    if reference is not None:
        return reference.shape[1]
    raise StoreError(
        "cannot tell how many features the model takes (no n_features_in_): "
        "pass --reference-data with one column per feature"
    )


def _feature_kinds(
    model: Any,
    names: list[str] | None,
    n_features: int,
    reference: pd.DataFrame | None,
    categorical: set[str],
) -> list[str]:
    labels = names or [str(i) for i in range(n_features)]
    kinds = [NUMERIC] * n_features
    for j in _encoded_string_columns(model, labels):
        kinds[j] = CATEGORICAL
    if reference is not None:
        columns = _reference_columns(reference, names, n_features)
        for j, column in enumerate(columns):
            if pd.api.types.is_bool_dtype(column):
                kinds[j] = BOOLEAN if kinds[j] == NUMERIC else kinds[j]
            elif not pd.api.types.is_numeric_dtype(column):
                kinds[j] = CATEGORICAL
    for j in _text_columns(model, labels):
        kinds[j] = TEXT
    unknown = categorical - set(labels)
    if unknown:
        raise StoreError(f"--categorical names unknown features: {', '.join(sorted(unknown))}")
    for j, label in enumerate(labels):
        if label in categorical:
            kinds[j] = CATEGORICAL
    return kinds


def _text_columns(model: Any, labels: list[str]) -> list[int]:
    """The features a fitted vectorizer reads: the one of a bare text model, or ColumnTransformer
    columns sent to one."""
    if len(labels) == 1 and text.bare_vectorizer(model) is not None:
        return [0]
    return list(text.column_vectorizers(model, labels))


def _encoded_string_columns(model: Any, labels: list[str]) -> set[int]:
    """Columns that a fitted ColumnTransformer sends to an encoder fitted on strings."""
    found: set[int] = set()
    for transformer in _walk(model):
        for _, inner, columns in getattr(transformer, "transformers_", []) or []:
            if not any(_has_string_categories(step) for step in _walk(inner)):
                continue
            for column in _as_list(columns):
                if isinstance(column, str) and column in labels:
                    found.add(labels.index(column))
                elif isinstance(column, (int, np.integer)) and 0 <= column < len(labels):
                    found.add(int(column))
    return found


def _walk(estimator: Any) -> list[Any]:
    steps = getattr(estimator, "steps", None)
    if steps:
        return [estimator] + [item for _, step in steps for item in _walk(step)]
    return [estimator]


def _has_string_categories(estimator: Any) -> bool:
    categories = getattr(estimator, "categories_", None)
    return bool(categories) and any(np.asarray(c).dtype.kind in "OUS" for c in categories)


def _as_list(columns: Any) -> list[Any]:
    if isinstance(columns, (str, int, np.integer)):
        return [columns]
    if isinstance(columns, slice) or callable(columns):
        return []
    array = np.asarray(columns)
    if array.dtype == bool:
        return [int(i) for i in np.flatnonzero(array)]
    return list(array.tolist())


def _reference_columns(
    reference: pd.DataFrame, names: list[str] | None, n_features: int
) -> list[pd.Series]:
    if names is not None:
        missing = [name for name in names if name not in reference.columns]
        if missing:
            raise StoreError(f"reference data lacks feature columns: {', '.join(missing[:10])}")
        return [reference[name] for name in names]
    if reference.shape[1] != n_features:
        raise StoreError(
            f"reference data has {reference.shape[1]} columns, the model takes {n_features}"
        )
    return [reference.iloc[:, j] for j in range(n_features)]


def _sample_rows(
    schema: InputSchema, reference: pd.DataFrame | None, model: Any
) -> list[list[Any]]:
    if reference is not None:
        columns = _reference_columns(reference, schema.names, schema.n_features)
        frame = pd.concat(columns, axis=1).dropna().head(3)
        if len(frame):
            return [[_plain(v) for v in row] for row in frame.itertuples(index=False)]
    categories = _first_categories(model, schema.labels)
    for j in _text_columns(model, schema.labels):
        vectorizer = text.bare_vectorizer(model) if schema.vector else None
        vectorizer = vectorizer or text.column_vectorizers(model, schema.labels).get(j)
        categories[j] = text.sample_text(vectorizer)
    return [
        [
            categories.get(j, "") if kind in (CATEGORICAL, TEXT) else 0.0
            for j, kind in enumerate(schema.kinds)
        ]
    ]


def _first_categories(model: Any, labels: list[str]) -> dict[int, Any]:
    first: dict[int, Any] = {}
    for transformer in _walk(model):
        for _, inner, columns in getattr(transformer, "transformers_", []) or []:
            encoders = [step for step in _walk(inner) if getattr(step, "categories_", None)]
            for encoder in encoders:
                for column, cats in zip(_as_list(columns), encoder.categories_):
                    j = (
                        labels.index(column)
                        if isinstance(column, str) and column in labels
                        else column
                    )
                    if isinstance(j, int) and len(cats):
                        first.setdefault(j, _plain(cats[0]))
    return first


def _output_fields(model: Any, task: str, answer: np.ndarray) -> dict[str, Any]:
    """classes, predict_proba and the shape and type of `predict`'s answer.

    `outputs` is the number of columns of a multi-output or multilabel model (a 2-D `y`), null
    for one output; such a model serves its predictions only (no classes, no probabilities:
    scikit-learn gives one class array and one probability array per output).
    `output_dtype` is "int64", "float64", "bool" or "object" (strings and other labels).
    """
    outputs = int(answer.shape[1]) if answer.ndim == 2 else None
    classes = getattr(model, "classes_", None)
    single_classifier = task == "classifier" and outputs is None
    return {
        "classes": _plain(classes) if classes is not None and single_classifier else None,
        "predict_proba": single_classifier and hasattr(model, "predict_proba"),
        "outputs": outputs,
        "output_dtype": _dtype_name(answer.dtype),
    }


def _score_fields(
    model: Any, schema: InputSchema, sample: list[list[Any]], answer: np.ndarray
) -> dict[str, Any]:
    """`scores`: the method `/v1` return_scores, V2's `scores` output and batch --scores call
    (decision_function first, else an outlier detector's score_samples; null when neither, or
    for a multi-output model); `score_width`: 1 for one number per row, k for k per row."""
    method = _score_method(model) if answer.ndim == 1 else None
    if method is None:
        return {"scores": None, "score_width": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = np.asarray(getattr(model, method)(schema.convert(sample)), dtype=np.float64)
    except Exception:  # e.g. a method a meta-estimator exposes but its final step lacks
        return {"scores": None, "score_width": None}
    if scores.ndim > 2 or scores.shape[0] != len(sample):
        return {"scores": None, "score_width": None}
    width = int(scores.shape[1]) if scores.ndim == 2 else 1
    return {"scores": method, "score_width": width}


def _score_method(model: Any) -> str | None:
    if hasattr(model, "decision_function"):
        return "decision_function"
    if is_outlier_detector(model) and hasattr(model, "score_samples"):
        return "score_samples"
    return None


def _dtype_name(dtype: np.dtype) -> str:
    kinds = {"i": "int64", "u": "int64", "f": "float64", "b": "bool"}
    return kinds.get(dtype.kind, "object")


def _smoke_test(model: Any, schema: InputSchema, sample: list[list[Any]]) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(model.predict(schema.convert(sample)))
    except Exception as exc:
        raise StoreError(
            f"the model failed to predict on its sample input ({type(exc).__name__}: {exc}); "
            "pass --reference-data with real rows, or --categorical for string features"
        ) from None


def _nullable_flags(
    model: Any, schema: InputSchema, sample: list[list[Any]], overrides: dict[str, bool]
) -> list[bool]:
    """Per feature: does the model answer the sample row with that (numeric) feature NaN?"""
    unknown = set(overrides) - set(schema.labels)
    if unknown:
        raise StoreError(f"--nullable names unknown features: {', '.join(sorted(unknown))}")
    strings = [n for n, k in zip(schema.labels, schema.kinds) if k != NUMERIC and overrides.get(n)]
    if strings:
        raise StoreError(f"--nullable names categorical features: {', '.join(strings)}")
    every = [True] * schema.n_features
    probe = InputSchema(
        schema.n_features, schema.names, schema.kinds, schema.frame, every, schema.model_names
    )
    flags = []
    # One predict of one row per feature: with an OpenMP pool each tiny call waits for every
    # thread to get a core (an HGB of 300 features on 2 busy cores: 20 s instead of 1).
    with threadpool_limits(limits=1):
        for j, (label, kind) in enumerate(zip(schema.labels, schema.kinds)):
            if label in overrides:
                flags.append(overrides[label])
            else:
                flags.append(kind == NUMERIC and _answers_nan(model, probe, sample[0], j))
    return flags


def _answers_nan(model: Any, probe: InputSchema, row: list[Any], j: int) -> bool:
    """scikit-learn's NaN checks stay on here, whatever a server in this process set."""
    try:
        with warnings.catch_warnings(), sklearn.config_context(assume_finite=False):
            warnings.simplefilter("ignore")
            answer = np.asarray(model.predict(probe.convert([[*row[:j], None, *row[j + 1 :]]])))
    except Exception:  # the model refuses NaN there: the feature is not nullable
        return False
    return answer.dtype.kind not in "fc" or bool(np.isfinite(answer).all())


def _plain(value: Any) -> Any:
    """numpy scalars and arrays to JSON-able Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
