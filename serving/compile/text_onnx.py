"""ONNX for a bare text model (a vectorizer Pipeline): its input type, options and parity rows.

skl2onnx converts TfidfVectorizer and CountVectorizer (not HashingVectorizer) into ONNX
Runtime's StringNormalizer, Tokenizer and TfIdfVectorizer operators, with limits: its regular
expressions and lowercasing are not scikit-learn's outside plain ASCII text. The usual parity
gate decides: both models score the sample rows and synthetic texts made of vocabulary terms,
unknown words, capitals, punctuation, digits and accented letters.
StringNormalizer needs a locale; "C.UTF-8" is built into glibc (ONNX Runtime's default,
en_US.UTF-8, is missing from slim images).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.features import text

LOCALE = "C.UTF-8"
HINT = (
    "ONNX Runtime tokenizes text unlike scikit-learn beyond plain ASCII words (a vocabulary "
    "with accented letters): keep serving the scikit-learn version"
)
_NOISE = ["zzq", "Xylo", "naïve", "CAFÉ", "42", "3.14", "don't", "e-mail", "!!", "?", "", "ß"]


def is_text_model(metadata: dict[str, Any]) -> bool:
    """A model of one text feature, fed a 1-D array of strings (no DataFrame)."""
    kinds = [f.get("kind") for f in metadata.get("features", [])]
    return kinds == ["text"] and not metadata.get("frame_input")


def initial_types() -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import StringTensorType

    return [("input", StringTensorType([None, 1]))]


def options(model: Any) -> dict[int, dict[str, Any]]:
    vectorizer = text.bare_vectorizer(model)
    return {id(vectorizer): {"locale": LOCALE}} if vectorizer is not None else {}


def parity_rows(metadata: dict[str, Any], model: Any, n: int, seed: int) -> np.ndarray:
    """The sample texts plus `n` synthetic ones, as an [N, 1] object array."""
    sample = [str(row[0]) for row in metadata.get("sample_input") or []]
    vectorizer = text.bare_vectorizer(model)
    terms = sorted(getattr(vectorizer, "vocabulary_", None) or {}) or ["text"]
    rng = np.random.default_rng(seed)
    synthetic = [_text(rng, terms) for _ in range(n)]
    rows = np.empty((len(sample) + n, 1), dtype=object)
    rows[:, 0] = sample + synthetic
    return rows


def _text(rng: np.random.Generator, terms: list[str]) -> str:
    words = []
    for _ in range(int(rng.integers(0, 12))):
        word = str(rng.choice(_NOISE)) if rng.random() < 0.2 else str(rng.choice(terms))
        words.append(word.upper() if rng.random() < 0.1 else word)
    return (", " if rng.random() < 0.2 else " ").join(words)
