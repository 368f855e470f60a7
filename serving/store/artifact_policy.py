"""How artifacts may be read: the register policy and SERVING_ALLOW_PICKLE, in one light module.

Callers that hold a `Settings` (the server's workers) pass its `allow_pickle`; command-line
paths that do not (register, batch, show, optimize) pass None and get the environment's value,
so a forgotten caller obeys the operator's switch instead of unpickling by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
PICKLE_REFUSED = "pickle refused: SERVING_ALLOW_PICKLE=false"


@dataclass(frozen=True)
class ArtifactPolicy:
    """How `register` treats its artifact. `allow_pickle` None: SERVING_ALLOW_PICKLE decides."""

    allow_pickle: bool | None = None
    to_skops: bool = False  # store a joblib/pickle estimator as model.skops
    trusted_types: frozenset[str] = field(default_factory=frozenset)  # accepted by the registrant


def pickle_allowed(explicit: bool | None = None) -> bool:
    """`explicit` when given, else SERVING_ALLOW_PICKLE (read now, through Settings)."""
    if explicit is not None:
        return explicit
    from serving.settings import Settings

    return Settings.from_env().allow_pickle


def refusal(artifact: str) -> str:
    """The one-line reason given wherever a pickle is refused (readiness, show, batch, register)."""
    return (
        f"{PICKLE_REFUSED} and {artifact} is a joblib/pickle file; serve a skops or ONNX "
        "version instead (made where pickle may run: models register --format skops, optimize)"
    )
