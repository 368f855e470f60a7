"""Feature names a library renamed at fit, matched back to the columns of the training frame.

LightGBM stores `mean radius` as `mean_radius` in `feature_names_in_` (it turns whitespace
into "_"). Users send the names they trained with, so at register a model's names that are
not all columns of the reference data are matched to them after turning every non-word
character into "_" on both sides; the match counts only if it is one to one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NOT_WORD = re.compile(r"\W")


def training_names(model_names: Sequence[str], columns: Sequence[object]) -> list[str] | None:
    """The training frame's name of each of `model_names`, in the model's order, when the
    library renamed them; None when every model name is a column, or no one-to-one match."""
    present = list(dict.fromkeys(str(column) for column in columns))
    if set(model_names) <= set(present):
        return None
    by_key: dict[str, list[str]] = {}
    for column in present:
        by_key.setdefault(_key(column), []).append(column)
    matches = [by_key.get(_key(name), []) for name in model_names]
    if any(len(found) != 1 for found in matches):
        return None
    names = [found[0] for found in matches]
    return names if len(set(names)) == len(names) else None


def _key(name: str) -> str:
    return _NOT_WORD.sub("_", name)
