"""Traffic routing of an alias: the per-request choice between weighted (sticky) variants.

Built by each worker's loader from the `routes` entry of `deployment.json` (whose format and
validation live in `serving.store.deployment`). No I/O here.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass
from typing import Any

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
