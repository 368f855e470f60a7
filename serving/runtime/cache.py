"""An optional per-worker LRU cache of predictions (`SERVING_PREDICTION_CACHE` entries; 0: off).

The key is (model, version, whether probabilities were asked, the validated input's dtype,
shape and bytes): the input *after* validation and conversion, so `[1, 2]` and `[1.0, 2.0]`, or
objects with keys in any order, share an entry. Versions are immutable, so an entry is never
stale: a promote changes the version that answers, and its requests miss. When a worker swaps,
the entries of versions it no longer holds are dropped (`retain`); a version it keeps in its
pinned LRU for a rollback keeps its entries, so a rollback to it hits again.

Only answers are stored: a request the model refuses raises before anything is put. Requests
over `MAX_ROWS` rows or `MAX_INPUT_BYTES` of input bypass the cache (they are rarely repeated,
and the bound on entries must also bound memory). One lock guards the dict; the model runs
outside it, so two threads that miss on the same key both compute it (the last one is kept).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from serving.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from serving.runtime.model import LoadedModel
    from serving.runtime.predict import PredictionResult

HIT, MISS, BYPASS = "hit", "miss", "bypass"
MAX_ROWS = 256
MAX_INPUT_BYTES = 64 * 1024


class PredictionCache:
    """A bounded LRU of prediction results, shared by the threads of one worker."""

    def __init__(self, size: int, metrics: Metrics | None = None) -> None:
        if size < 1:
            raise ValueError("a prediction cache needs at least one entry")
        self.size = size
        self._metrics = metrics or Metrics()
        self._entries: OrderedDict[Hashable, PredictionResult] = OrderedDict()
        self._lock = threading.Lock()

    def predict(
        self,
        loaded: LoadedModel,
        features: Any,
        return_proba: bool,
        compute: Callable[[], PredictionResult],
    ) -> PredictionResult:
        """The stored answer for this input, or `compute()` stored; `result.cache` says which."""
        key = make_key(loaded.name, loaded.version, features, return_proba)
        if key is None:
            return dataclasses.replace(compute(), cache=BYPASS)
        stored = self.get(key)
        self._metrics.cache(loaded.name, stored is not None)
        if stored is not None:
            return dataclasses.replace(stored, features=features, cache=HIT)
        result = compute()  # raises for input the model refuses: errors are never stored
        self.put(key, result)
        return dataclasses.replace(result, cache=MISS)

    def get(self, key: Hashable) -> PredictionResult | None:
        """The stored result (now the most recently used), or None."""
        with self._lock:
            stored = self._entries.get(key)
            if stored is not None:
                self._entries.move_to_end(key)
        return stored

    def put(self, key: Hashable, result: PredictionResult) -> None:
        _freeze(result.predictions)
        _freeze(result.probabilities)
        kept = dataclasses.replace(result, features=None, cache=None)  # no input held twice
        with self._lock:
            self._entries[key] = kept
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def retain(self, versions: Iterable[tuple[str, int]]) -> int:
        """Drop the entries of every (model, version) not in `versions`; how many went."""
        keep = set(versions)
        with self._lock:
            gone = [key for key in self._entries if key[:2] not in keep]  # type: ignore[index]
            for key in gone:
                del self._entries[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)


def make_key(name: str, version: int, features: Any, return_proba: bool) -> Hashable | None:
    """The cache key of one validated input, or None when it must not be cached."""
    if isinstance(features, np.ndarray) and features.dtype.kind != "O":
        if features.ndim != 2 or features.shape[0] > MAX_ROWS:
            return None
        if features.nbytes > MAX_INPUT_BYTES:
            return None
        data = features.tobytes()
        return (name, version, return_proba, features.dtype.str, features.shape, data)
    # A DataFrame (categorical features), or an object array (strings: never by their pointers)
    values = features if isinstance(features, np.ndarray) else getattr(features, "values", None)
    if values is None or len(values) > MAX_ROWS:
        return None
    try:
        data = orjson.dumps(values.tolist(), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return None
    if len(data) > MAX_INPUT_BYTES:
        return None
    columns = tuple(getattr(features, "columns", ()))
    return (name, version, return_proba, "frame", columns, data)


def _freeze(values: Any) -> None:
    """Cached arrays are shared by every hit: make an accidental write fail loudly."""
    if isinstance(values, np.ndarray):
        values.flags.writeable = False
