"""What a worker holds in memory: a loaded version, a model's serving state, a request's choice."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import is_clusterer, is_outlier_detector

from serving.features.schema import InputSchema
from serving.rollouts.routing import Route


@dataclass(frozen=True)
class LoadedModel:
    """One verified version in memory, with everything the hot path needs precomputed."""

    name: str
    version: int
    model: Any
    metadata: dict[str, Any]
    schema: InputSchema
    loaded_at: float
    # What the hot path calls predict/predict_proba on: the model itself, or a verified
    # numpy kernel that answers the same (serving.runtime.kernels).
    runner: Any = None
    # This worker's serving.runtime.cache.PredictionCache, or None (typed loosely: the cache
    # module imports this one).
    cache: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.runner is None:
            object.__setattr__(self, "runner", self.model)

    @property
    def runtime(self) -> str:
        return str(getattr(self.runner, "runtime_name", "sklearn"))

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "other"))

    @property
    def classes(self) -> list[Any] | None:
        return self.metadata.get("classes")

    @property
    def outputs(self) -> int | None:
        """Columns of `predict` for a multi-output/multilabel model (2-D y); None for one."""
        value = self.metadata.get("outputs")
        return int(value) if value else None

    @property
    def output_dtype(self) -> str | None:
        """ "int64", "float64", "bool" or "object"; None in metadata written before it."""
        value = self.metadata.get("output_dtype")
        return str(value) if value else None

    @property
    def why_no_proba(self) -> str:
        """Why this model gives no probabilities, in words: "is a regressor", "is a clusterer"."""
        if self.outputs:
            return f"has {self.outputs} outputs (multi-output models give no probabilities here)"
        kind = _estimator_kind(self.model)
        if kind:
            return f"is {kind}"
        if self.task == "classifier":
            return "is a classifier without predict_proba"
        return "is a regressor" if self.task == "regressor" else "does not give probabilities"

    @property
    def can_proba(self) -> bool:
        return bool(self.metadata.get("predict_proba"))

    @property
    def score_method(self) -> str | None:
        """ "decision_function", "score_samples" or None (recorded at register)."""
        value = self.metadata.get("scores")
        return str(value) if value and self.metadata.get("format") != "onnx" else None

    def scores(self, features: Any) -> Any:
        """The estimator's own score method (a numpy kernel has none) on validated input."""
        return getattr(self.model, str(self.score_method))(features)

    @property
    def score_width(self) -> int:
        """Scores per row: 1 (binary, outliers) or the number of classes."""
        return int(self.metadata.get("score_width") or 1)

    @property
    def why_no_scores(self) -> str:
        """Why this version gives no scores, in words (the return_proba refusals' style)."""
        if self.metadata.get("format") == "onnx":
            return "is compiled to ONNX (scores are served by its scikit-learn version)"
        if "scores" not in self.metadata:
            return "was registered before scores were recorded (register it again)"
        if self.outputs:
            return f"has {self.outputs} outputs (multi-output models give no scores here)"
        kind = _estimator_kind(self.model)
        if kind:
            return f"is {kind} without decision_function or score_samples"
        if self.task == "classifier":
            return "is a classifier without decision_function"
        if self.task == "regressor":
            return "is a regressor"
        return "has no decision_function or score_samples"


def _estimator_kind(model: Any) -> str | None:
    """ "an outlier detector" or "a clusterer" from scikit-learn's tags; None for the rest."""
    try:
        if is_outlier_detector(model):
            return "an outlier detector"
        return "a clusterer" if is_clusterer(model) else None
    except (AttributeError, TypeError):  # not a scikit-learn estimator: no tags to read
        return None


@dataclass(frozen=True)
class ModelState:
    """What one worker serves for one model; replaced whole on every change."""

    name: str
    signature: object  # what the store says changes with the deployment (None: no deployment)
    wanted: dict[str, int]
    serving: dict[str, LoadedModel]
    problems: dict[str, str] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    shadows: dict[str, LoadedModel] = field(default_factory=dict)
    loaded: dict[int, LoadedModel] = field(default_factory=dict)
    unresolved: str | None = None  # why no alias can be resolved (damaged deployment.json)

    def versions(self) -> dict[int, LoadedModel]:
        return dict(self.loaded) or {m.version: m for m in self.serving.values()}


@dataclass(frozen=True)
class Choice:
    """What serves one request: the model, its variant when the alias is split, a shadow."""

    loaded: LoadedModel
    variant: str | None
    shadow: LoadedModel | None


def keep_replaced(
    recent: OrderedDict[tuple[str, int], LoadedModel],
    size: int,
    old: dict[str, ModelState],
    new: dict[str, ModelState],
) -> None:
    """Put the versions a swap from `old` to `new` dropped at the fresh end of the LRU `recent`
    (bounded to `size`), so a rollback or a promote back swaps a reference, loading nothing."""
    for name, state in old.items():
        kept = new[name].versions() if name in new else {}
        for version, loaded in state.versions().items():
            if version not in kept:
                recent[(name, version)] = loaded
                recent.move_to_end((name, version))
    while len(recent) > size:
        recent.popitem(last=False)
