"""What a worker holds in memory: a loaded version, a model's serving state, a request's choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    def can_proba(self) -> bool:
        return bool(self.metadata.get("predict_proba"))


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
