"""Scoring chunks: decode, validate and predict each, in this process or in worker processes.

A chunk is predicted whole; a row the model refuses is found by bisecting the chunk and
rejected alone. With `--workers N`, N spawned processes each load the version once and score
chunks in input order, at most 2N chunks in flight.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sklearn
from threadpoolctl import threadpool_limits

from serving.batch import files as batch_io
from serving.batch.files import Decoded, RawChunk, Reading
from serving.batch.validate import Problem, validate
from serving.errors import ModelUnavailable
from serving.runtime import artifacts
from serving.runtime.model import LoadedModel
from serving.runtime.prepare import prepare
from serving.store.base import StoreBase
from serving.store.model_store import ModelStore

# Errors a model raises for values it refuses (unknown category, bad dtype): the row is rejected.
# Anything else is a bug or a broken model and stops the run.
_MODEL_ERRORS = (ValueError, TypeError, KeyError)


@dataclass(frozen=True)
class Job:
    """Everything a worker process needs to score chunks; pickled once per worker."""

    store_root: Path  # a local store: the store itself, or an object store's cache
    name: str
    version: int
    allow_mismatch: bool
    proba: bool
    reading: Reading
    scores: bool = False  # add the score method's columns (score, or score_<class>)


def load_model(store: StoreBase, name: str, version: int, allow_mismatch: bool) -> LoadedModel:
    """Load and verify one version the way a server worker does, or raise ModelUnavailable."""
    metadata = store.read_metadata(name, version)
    try:
        model = artifacts.load_version(store.version_dir(name, version), metadata, allow_mismatch)
        # As a server worker: array input and a numpy kernel where they answer the same.
        schema, runner = prepare(name, version, model, metadata)
    except artifacts.ModelLoadError as exc:
        message = f"model {name!r} version {version} cannot be loaded: {exc.reason}"
        raise ModelUnavailable(message) from None
    return LoadedModel(name, version, model, metadata, schema, time.monotonic(), runner)


@dataclass
class Scored:
    table: pa.Table
    rejects: list[dict[str, Any]]


def scored_chunks(
    job: Job, loaded: LoadedModel, chunks: Iterator[RawChunk], workers: int
) -> Iterator[tuple[RawChunk, Scored]]:
    """(chunk, result) pairs in input order, whatever the number of processes."""
    if workers == 1:
        scorer = Scorer(loaded, job)
        with _one_thread():
            for chunk in chunks:
                yield chunk, scorer.score(chunk)
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(job,),
    )
    pending: deque[tuple[RawChunk, Any]] = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(_score_in_worker, chunk)))
            if len(pending) > 2 * workers:  # bounded: memory stays flat
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    except BrokenProcessPool as exc:
        raise ModelUnavailable(f"a worker process died: {exc}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # One BLAS/OpenMP thread per process (scale with --workers), and no second finiteness
    # check inside scikit-learn: rows are validated before they reach the model.
    with threadpool_limits(limits=1), sklearn.config_context(assume_finite=True):
        yield


# One scorer per worker process, set by the pool's initializer: the task function can only
# reach per-process state through the module.
_worker_scorer: Scorer | None = None


def _init_worker(job: Job) -> None:
    global _worker_scorer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    threadpool_limits(limits=1)
    sklearn.set_config(assume_finite=True)
    loaded = load_model(ModelStore(job.store_root), job.name, job.version, job.allow_mismatch)
    _worker_scorer = Scorer(loaded, job)


def _score_in_worker(chunk: RawChunk) -> Scored:
    assert _worker_scorer is not None, "worker not initialised"
    return _worker_scorer.score(chunk)


_ARROW_TYPES = {"int64": pa.int64(), "bool": pa.bool_(), "object": pa.string()}


class Scorer:
    """Decode, validate and predict one chunk; build its output table and its rejects."""

    def __init__(self, loaded: LoadedModel, job: Job) -> None:
        self._loaded, self._job = loaded, job
        self._id_name = job.reading.id_column or "row"
        classes = loaded.classes or []
        self._proba_names = [f"proba_{c}" for c in classes] if job.proba else []
        # Probabilities and scores travel as one float matrix: these are its columns.
        self._float_names = self._proba_names + (score_names(loaded) if job.scores else [])
        # One column per output of a multi-output or multilabel model: prediction_0, ...
        outputs = loaded.outputs
        self._prediction_names = (
            [f"prediction_{k}" for k in range(outputs)] if outputs else ["prediction"]
        )

    def score(self, chunk: RawChunk) -> Scored:
        decoded = batch_io.decode(chunk, self._job.reading)
        features, ok, problems = validate(decoded, self._loaded.schema)
        offsets = np.flatnonzero(ok)
        predictions, probabilities, failed = predict_isolating(
            self._predict, features, len(offsets)
        )
        for position, problem in failed.items():
            problems[int(offsets[position])] = problem
        kept = np.delete(offsets, list(failed)) if failed else offsets
        if len(kept):
            table = self._table(chunk.start, kept, decoded.ids, predictions, probabilities)
        else:
            table = self.empty_schema().empty_table()
        rejects = [self._reject(chunk.start, i, problems[i], decoded) for i in sorted(problems)]
        return Scored(table, rejects)

    def empty_schema(self) -> pa.Schema:
        """The output schema when no row at all was written (a header, a Parquet schema)."""
        classes = self._loaded.classes
        id_type = pa.string() if self._job.reading.id_column else pa.int64()
        if classes:
            label_type = pa.array(classes).type
        else:
            label_type = _ARROW_TYPES.get(self._loaded.output_dtype or "", pa.float64())
        return pa.schema(
            [
                (self._id_name, id_type),
                *[(name, label_type) for name in self._prediction_names],
                *[(name, pa.float64()) for name in self._float_names],
                ("model", pa.string()),
                ("version", pa.int64()),
            ]
        )

    def _predict(self, features: Any) -> tuple[np.ndarray, np.ndarray | None]:
        model = self._loaded.runner  # the model, or a numpy kernel verified to answer the same
        with warnings.catch_warnings():
            # A model fitted on a DataFrame and fed the equivalent array (see runtime.prepare).
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            predictions = np.asarray(model.predict(features))
            floats = [np.asarray(model.predict_proba(features))] if self._job.proba else []
            if self._job.scores:
                scores = np.asarray(self._loaded.scores(features), dtype=np.float64)
                floats.append(scores.reshape(len(scores), -1))
        return predictions, np.hstack(floats) if floats else None

    def _table(
        self,
        start: int,
        kept: np.ndarray,
        ids: pa.Array | None,
        predictions: np.ndarray,
        probabilities: np.ndarray | None,
    ) -> pa.Table:
        rows = len(kept)
        key = ids.take(pa.array(kept, pa.int64())) if ids is not None else pa.array(start + kept)
        columns: dict[str, Any] = {self._id_name: key}
        if predictions.ndim == 2:  # by the answer: metadata older than `outputs` lacks it
            for j in range(predictions.shape[1]):
                columns[f"prediction_{j}"] = pa.array(predictions[:, j])
        else:
            columns["prediction"] = pa.array(predictions)
        for j, name in enumerate(self._float_names):
            assert probabilities is not None
            columns[name] = pa.array(probabilities[:, j], pa.float64())
        columns["model"] = pa.repeat(pa.scalar(self._loaded.name), rows)
        columns["version"] = pa.repeat(pa.scalar(self._loaded.version, pa.int64()), rows)
        return pa.table(columns)

    def _reject(self, start: int, i: int, problem: Problem, decoded: Decoded) -> dict[str, Any]:
        reason, feature, message = problem
        out: dict[str, Any] = {"row": start + int(i)}
        if decoded.ids is not None:
            out["id"] = decoded.ids[int(i)].as_py()
        out.update(reason=reason, feature=feature, message=message)
        return out


def score_names(loaded: LoadedModel) -> list[str]:
    """`score` for one score per row, else `score_<class>` (a multiclass decision_function)."""
    width, classes = loaded.score_width, loaded.classes or []
    if width == 1:
        return ["score"]
    return (
        [f"score_{c}" for c in classes]
        if len(classes) == width
        else [f"score_{j}" for j in range(width)]
    )


def predict_isolating(
    predict: Callable[[Any], tuple[np.ndarray, np.ndarray | None]], features: Any, rows: int
) -> tuple[np.ndarray, np.ndarray | None, dict[int, Problem]]:
    """Predict all rows at once; if the model refuses the batch, bisect to the rows it refuses.

    Returns the predictions (and probabilities) of the rows that passed, in order, and the
    problem of each refused row by position. One bad row costs about two extra passes.
    Iterative, and no exception is kept: a closure or a traceback in a reference cycle would
    keep every chunk's features alive until the cyclic GC runs (memory grows chunk by chunk).
    """
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    failed: dict[int, Problem] = {}
    todo = [(0, rows)] if rows else []
    while todo:
        low, high = todo.pop()
        try:
            parts.append(predict(features if high - low == rows else _rows(features, low, high)))
        except _MODEL_ERRORS as exc:
            if high - low == 1:
                failed[low] = _model_problem(exc)
            else:  # the lower half is popped first: parts stay in row order
                middle = (low + high) // 2
                todo += [(middle, high), (low, middle)]
    if not parts:
        return np.empty(0), None, failed
    predictions = np.concatenate([p for p, _ in parts])
    probabilities = None if parts[0][1] is None else np.concatenate([q for _, q in parts])
    return predictions, probabilities, failed


def _rows(features: Any, low: int, high: int) -> Any:
    return features.iloc[low:high] if isinstance(features, pd.DataFrame) else features[low:high]


def _model_problem(exc: Exception) -> Problem:
    text = " ".join(str(exc).split())
    reason = "unknown_category" if "unknown categor" in text.lower() else "model_error"
    return reason, None, f"the model refused the row: {type(exc).__name__}: {text}"
