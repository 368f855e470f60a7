"""Traffic routing of an alias: weighted variants (sticky by key or random) and a shadow.

Pure functions over the `deployment.json` document, shared by the store (writes, validation)
and the loader (per-request choice). No I/O here.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass
from typing import Any

from serving.errors import StoreError

_SCALE = float(1 << 64)


@dataclass(frozen=True)
class Route:
    """An alias split between versions; `cumulative` holds the right edge of each bucket."""

    versions: tuple[int, ...]
    cumulative: tuple[float, ...]
    sticky: bool
    experiment: str

    @classmethod
    def from_doc(cls, doc: dict[str, Any], usable: set[int] | None = None) -> Route | None:
        """Build from the deployment entry; variants not in `usable` are left out (weights
        renormalised). None when nothing is left."""
        pairs = [
            (int(v["version"]), float(v["weight"]))
            for v in doc.get("variants", [])
            if float(v["weight"]) > 0 and (usable is None or int(v["version"]) in usable)
        ]
        total = sum(weight for _, weight in pairs)
        if not pairs or total <= 0:
            return None
        edges, running = [], 0.0
        for _, weight in pairs:
            running += weight / total
            edges.append(running)
        edges[-1] = 1.0
        return cls(
            tuple(version for version, _ in pairs),
            tuple(edges),
            bool(doc.get("sticky", False)),
            str(doc.get("experiment", "")),
        )

    def choose(self, key: str | None) -> int:
        """The version for one request: a stable hash of (experiment, key), else random."""
        if key is not None and self.sticky:
            digest = hashlib.blake2b(f"{self.experiment}\x00{key}".encode(), digest_size=8)
            point = int.from_bytes(digest.digest(), "big") / _SCALE
        else:
            point = random.random()
        return self.versions[
            min(bisect.bisect_right(self.cumulative, point), len(self.versions) - 1)
        ]


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
