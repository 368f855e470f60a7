"""What one request decoded (`Rows`) and what served and answered it (`Outcome`). No Flask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.runtime.model import LoadedModel
from serving.runtime.predict import PredictionResult, predict, predict_array


@dataclass(frozen=True, slots=True)
class Rows:
    """The rows a front door decoded: JSON instances (rows or objects) or a numeric 2-D array."""

    instances: list[Any] | None = None
    array: np.ndarray | None = None
    # False when the body cannot hold a boolean value (lets validation skip a per-value scan).
    may_have_bools: bool = True

    def predict(
        self,
        loaded: LoadedModel,
        return_proba: bool,
        max_instances: int | None,
        return_scores: bool = False,
    ) -> PredictionResult:
        """Validate these rows against `loaded`'s schema and run it (the primary or a shadow)."""
        if self.array is not None:
            return predict_array(loaded, self.array, return_proba, max_instances, return_scores)
        if self.instances is None:
            raise ValueError("Rows needs instances or an array")
        return predict(
            loaded, self.instances, return_proba, max_instances, self.may_have_bools, return_scores
        )


@dataclass(slots=True)
class Outcome:
    """One request through the dataplane: what served it, and (once predicted) what it answered.

    Made by `route` (so a request refused after routing is still counted against its version),
    completed once by `infer`. The request hooks read only this: headers, metrics, log line,
    prediction log and drift monitor.
    """

    served: LoadedModel
    alias: str | None  # None for a pinned version
    variant: str | None  # "v<version>" when the alias is split, else None
    shadow: LoadedModel | None  # the alias's shadow, scored after the response; None if none
    result: PredictionResult | None = None  # None until predicted, and when prediction failed
    rows: Rows | None = None

    @property
    def model(self) -> str:
        return self.served.name

    @property
    def version(self) -> int:
        return self.served.version

    @property
    def inputs(self) -> list[Any] | None:
        """What the prediction log keeps of the input: decoded instances (arrays are not kept)."""
        return self.rows.instances if self.rows is not None else None
