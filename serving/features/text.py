"""Text features: finding them in a fitted model, and measuring live text against the fit.

A model takes text where a scikit-learn vectorizer (TfidfVectorizer, CountVectorizer,
HashingVectorizer: anything with `build_analyzer`) reads raw strings: the model itself or a step
of a Pipeline that only text-to-text steps precede (a bare text model, fed a 1-D array of
strings: no step before it learnt a feature count), or a ColumnTransformer column sent to one
(fed as that DataFrame column). The drift monitor measures a text feature by
its length in characters and, where the vectorizer has a fitted `vocabulary_`, the share of its
tokens that are out of that vocabulary (HashingVectorizer has none: length only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

DEFAULT_NAME = "text"  # the one feature of a bare text model, unless the reference data names it
Vocabulary = tuple[Any, Any]  # (analyzer: str -> tokens, vocabulary: a mapping or set of tokens)


def is_vectorizer(estimator: Any) -> bool:
    return callable(getattr(estimator, "build_analyzer", None)) and hasattr(estimator, "transform")


def bare_vectorizer(model: Any) -> Any | None:
    """The vectorizer a bare text model starts with: itself, or the first vectorizer of its
    Pipeline when no step before it learnt a feature count (a FunctionTransformer cleaning the
    strings may come first; a ColumnTransformer or a scaler may not)."""
    if is_vectorizer(model):
        return model
    for _, step in getattr(model, "steps", None) or []:
        if step is None or step == "passthrough":
            continue
        found = bare_vectorizer(step)
        if found is not None:
            return found
        if hasattr(step, "n_features_in_") or hasattr(step, "transformers_"):
            return None
    return None


def column_vectorizers(model: Any, labels: Sequence[str]) -> dict[int, Any]:
    """Feature index -> the vectorizer a fitted ColumnTransformer (anywhere in a Pipeline's
    steps) sends that one column to."""
    found: dict[int, Any] = {}
    for transformer in _walk(model):
        for _, inner, column in getattr(transformer, "transformers_", []) or []:
            vectorizer = bare_vectorizer(inner)
            if vectorizer is None:
                continue
            if isinstance(column, str) and column in labels:
                found[labels.index(column)] = vectorizer
            elif isinstance(column, (int, np.integer)) and 0 <= column < len(labels):
                found[int(column)] = vectorizer
    return found


def vocabularies(model: Any, labels: Sequence[str], kinds: Sequence[str]) -> dict[int, Vocabulary]:
    """Feature index -> (analyzer, fitted vocabulary) for the text features that have one."""
    if len(kinds) == 1 and (vectorizer := bare_vectorizer(model)) is not None:
        by_column = {0: vectorizer}
    else:
        by_column = column_vectorizers(model, labels)
    out: dict[int, Vocabulary] = {}
    for j, vectorizer in by_column.items():
        vocabulary = getattr(vectorizer, "vocabulary_", None)
        if vocabulary is not None and kinds[j] == "text":
            try:
                out[j] = (vectorizer.build_analyzer(), vocabulary)
            except Exception:  # an analyzer that cannot be rebuilt: length only
                continue
    return out


def sample_text(vectorizer: Any) -> str:
    """A short text of the fitted vocabulary's first terms (a sample row for a bare text model)."""
    vocabulary = getattr(vectorizer, "vocabulary_", None)
    if not vocabulary:
        return DEFAULT_NAME
    return " ".join(sorted(vocabulary)[:3])


def lengths(values: Iterable[Any]) -> np.ndarray:
    """Characters per text; NaN for a value that is not a string (a missing value)."""
    return np.array([len(v) if type(v) is str else np.nan for v in values], dtype=np.float64)


def oov_counts(vocabulary: Vocabulary, values: Iterable[Any]) -> tuple[int, int]:
    """(tokens, tokens out of the fitted vocabulary) over the strings of `values`."""
    analyzer, known = vocabulary
    tokens = oov = 0
    for value in values:
        if type(value) is not str:
            continue
        for token in analyzer(value):
            tokens += 1
            if token not in known:
                oov += 1
    return tokens, oov


def _walk(estimator: Any) -> list[Any]:
    steps = getattr(estimator, "steps", None)
    if steps:
        return [estimator] + [item for _, step in steps for item in _walk(step)]
    return [estimator]
