"""The file `models register` is given, made ready to publish: read it as its format allows
(joblib/pickle only when SERVING_ALLOW_PICKLE permits, skops with accepted types), describe it,
and convert it to skops when asked.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from serving.errors import StoreError
from serving.features.schema import InputSchema
from serving.store import artifacts, skops_format
from serving.store.artifact_policy import (
    PICKLE_SUFFIXES,
    ArtifactPolicy,
    pickle_allowed,
    refusal,
)

_CHECK_ROWS = 1000  # reference rows a --format skops conversion is checked on, at most


@dataclass(frozen=True)
class Prepared:
    """What to publish: this file, under this name, with these metadata fields."""

    path: Path
    target: str
    metadata: dict[str, Any]


@contextlib.contextmanager
def prepare(
    artifact: Path,
    reference: pd.DataFrame | None,
    categorical: set[str] | None,
    policy: ArtifactPolicy | None = None,
    nullable: dict[str, bool] | None = None,
    text: set[str] | None = None,
) -> Iterator[Prepared]:
    """The publishable form of `artifact` (a converted file lives until the block ends).

    `nullable` overrides, per feature, the probe of whether the model takes missing values;
    `text` names text features (a model without feature names: its one text feature)."""
    policy = policy or ArtifactPolicy()
    artifact = Path(artifact)
    if artifact.suffix.lower() == skops_format.SKOPS_SUFFIX:
        model, needed = skops_format.load_accepted(artifact, policy.trusted_types)
        described = artifacts.describe_model(model, reference, categorical, nullable, text)
        yield Prepared(artifact, skops_format.SKOPS_ARTIFACT, _skops_fields(described, needed))
        return
    if artifact.suffix.lower() in PICKLE_SUFFIXES and not pickle_allowed(policy.allow_pickle):
        raise StoreError(refusal(artifact.name))
    model = artifacts.read_artifact(artifact)
    described = artifacts.describe_model(model, reference, categorical, nullable, text)
    if not policy.to_skops:
        yield Prepared(artifact, artifacts.ARTIFACT_NAME, described)
        return
    with tempfile.TemporaryDirectory(prefix="serving-skops-") as tmp:
        dest = Path(tmp) / skops_format.SKOPS_ARTIFACT
        rows = check_rows(described, reference)
        needed = skops_format.convert(model, rows, dest, artifact.name)
        skops_format.check_accepted(f"{artifact.name} as skops", needed, policy.trusted_types)
        fields = {**_skops_fields(described, needed), "converted_from": artifact.name}
        yield Prepared(dest, skops_format.SKOPS_ARTIFACT, fields)


def check_rows(described: dict[str, Any], reference: pd.DataFrame | None) -> Any:
    """The model's input for the sample rows and up to 1000 reference rows."""
    schema = InputSchema.from_metadata(described)
    rows = list(described.get("sample_input") or [])
    if reference is not None:
        names = schema.names
        frame = reference[names] if names is not None else reference
        rows += frame.dropna().head(_CHECK_ROWS).values.tolist()
    return schema.convert(rows)


def _skops_fields(described: dict[str, Any], needed: list[str]) -> dict[str, Any]:
    return {**described, "format": skops_format.SKOPS_FORMAT, "trusted_types": sorted(needed)}
