"""skops artifacts at registration: load a .skops file with the types its registrant accepted,
or convert a fitted estimator to one and prove it answers the same.

skops rebuilds objects from a JSON schema instead of running pickle's opcodes; any type outside
its default safe set must be named as trusted. Workers load with the list recorded here
(`serving.runtime.skops_loading`). See docs/security.md for what that does and does not protect.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import StoreError

SKOPS_ARTIFACT = "model.skops"
SKOPS_SUFFIX = ".skops"
SKOPS_FORMAT = "skops"


def untrusted_types(path: Path) -> list[str]:
    """The types in a skops file that skops does not trust by default, sorted."""
    import skops.io

    try:
        return list(skops.io.get_untrusted_types(file=path))
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except Exception as exc:  # not a zip, no schema.json, a schema skops cannot read
        raise StoreError(
            f"{path.name}: not a readable skops file ({type(exc).__name__}: {exc})"
        ) from None


def check_accepted(label: str, needed: list[str], accepted: Collection[str]) -> None:
    """StoreError listing the types `needed` that the registrant did not accept."""
    missing = [name for name in needed if name not in accepted]
    if missing:
        raise StoreError(
            f"{label} holds types skops does not trust by default: {', '.join(missing)}. "
            "Review them (docs/security.md), then accept them with "
            f"--trusted-types {','.join(missing)} (or --trusted-types-file FILE)"
        )


def load_accepted(path: Path, accepted: Collection[str]) -> tuple[Any, list[str]]:
    """Load a candidate .skops file trusting exactly the types it needs, all of them accepted."""
    import skops.io

    needed = untrusted_types(path)
    check_accepted(path.name, needed, accepted)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = skops.io.load(path, trusted=needed)
    except Exception as exc:
        raise StoreError(
            f"{path.name}: skops cannot load it ({type(exc).__name__}: {exc})"
        ) from None
    if not callable(getattr(model, "predict", None)):
        raise StoreError(f"{path.name}: {type(model).__name__} has no predict method")
    return model, needed


def convert(model: Any, rows: Any, dest: Path, source: str) -> list[str]:
    """Write `model` to `dest` as skops; refuse unless the reloaded copy predicts `rows` the same.

    Returns the types the file needs trusted. `rows` is the model's input (sample/reference rows).
    """
    import skops.io

    try:
        skops.io.dump(model, dest)
        needed = untrusted_types(dest)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy = skops.io.load(dest, trusted=needed)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(
            f"{source}: skops cannot hold this model ({type(exc).__name__}: {exc}); "
            "register the joblib file as it is, or compile it to ONNX"
        ) from None
    for method in ("predict", "predict_proba"):
        if hasattr(model, method) and not _same_answers(model, copy, method, rows):
            raise StoreError(
                f"{source}: the skops copy's {method} differs from the original's on the "
                "sample/reference rows; not converted (register the joblib file as it is)"
            )
    return needed


def _same_answers(model: Any, copy: Any, method: str, rows: Any) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = np.asarray(getattr(model, method)(rows))
        except Exception:  # e.g. predict_proba of an SVC without probability=True
            return True
        try:
            actual = np.asarray(getattr(copy, method)(rows))
        except Exception:
            return False
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        return False
    return bool(np.array_equal(expected, actual, equal_nan=expected.dtype.kind in "fc"))
