"""Load a skops version for serving, trusting exactly the types recorded when it was registered.

Never `trusted=True` (skops refuses it anyway) and never the file's own list: a type the file
holds that its metadata does not name means the file is not the one that was reviewed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from serving.runtime.errors import ModelLoadError


def load_skops(path: Path, metadata: dict[str, Any]) -> Any:
    """The estimator in a (sha256-checked) skops artifact, or ModelLoadError with the reason."""
    import skops.io

    recorded = metadata.get("trusted_types")
    if not isinstance(recorded, list) or not all(isinstance(t, str) for t in recorded):
        raise ModelLoadError("skops version without a trusted_types list in its metadata")
    try:
        needed = skops.io.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from None
    unexpected = sorted(set(needed) - set(recorded))
    if unexpected:
        raise ModelLoadError(
            f"{path.name} holds types not in its recorded trusted_types: {', '.join(unexpected)}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return skops.io.load(path, trusted=list(recorded))
    except Exception as exc:
        raise ModelLoadError(
            f"skops cannot load {path.name}: {type(exc).__name__}: {exc}"
        ) from None
