"""The routes of a deployment record: weights parsed, validated and written as documents.

Pure functions over the `routes` entries of `deployment.json`, shared by the store (writes),
the command line (parsing) and the worker's routing table (`serving.rollouts.routing`).
"""

from __future__ import annotations

from typing import Any

from serving.errors import StoreError


def parse_weights(pairs: list[str]) -> dict[int, float]:
    """`["3=90", "4=10"]` (the CLI form) into {3: 90.0, 4: 10.0}."""
    weights: dict[int, float] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        try:
            weights[int(version)] = float(weight) if sep else float("nan")
        except ValueError:
            raise StoreError(f"bad weight {pair!r}: use VERSION=WEIGHT, e.g. 3=90") from None
    return weights


def validate_weights(weights: dict[int, float], known: list[int]) -> None:
    """Refuse negative, non-finite, all-zero weights and unknown versions (nothing changes)."""
    if not weights:
        raise StoreError("a route needs at least one VERSION=WEIGHT")
    for version, weight in weights.items():
        if version not in known:
            raise StoreError(f"version {version} does not exist (versions: {known})")
        if not (weight >= 0) or weight == float("inf"):
            raise StoreError(f"weight of version {version} must be a number >= 0, got {weight}")
    if sum(weights.values()) <= 0:
        raise StoreError("weights must not all be zero")


def route_doc(weights: dict[int, float], sticky: bool, experiment: str) -> dict[str, Any]:
    variants = [{"version": v, "weight": w} for v, w in sorted(weights.items())]
    return {"variants": variants, "sticky": sticky, "experiment": experiment}


def variant_name(version: int) -> str:
    return f"v{version}"
