"""`serving batch`: score a CSV, JSON Lines or Parquet file with one stored model version.

The version is loaded and verified as a server worker loads it (sha256, scikit-learn version, a
prediction on its own sample input) and rows are checked against the same InputSchema. Chunks
are validated with numpy and predicted whole; a bad row is rejected alone: a value that fails
validation, or a row the model refuses (found by bisecting the chunk). Every input row ends in
the output or in the rejects file (JSON Lines: row, reason, feature, message).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import signal
import sys
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sklearn
from threadpoolctl import threadpool_limits

from serving.batch import files as batch_io
from serving.batch.files import ABSENT, STDIO, Decoded, Field, RawChunk, Reading
from serving.batch.options import BatchOptions
from serving.errors import InvalidInput, ModelNotFound, ModelUnavailable
from serving.features.schema import NUMERIC, InputSchema
from serving.runtime import artifacts
from serving.runtime.loader import prepare
from serving.runtime.model import LoadedModel
from serving.settings import Settings
from serving.store.model_store import DEFAULT_ALIAS, ModelStore

EXIT_TOO_MANY_REJECTS = 3
# Errors a model raises for values it refuses (unknown category, bad dtype): the row is rejected.
# Anything else is a bug or a broken model and stops the run.
_MODEL_ERRORS = (ValueError, TypeError, KeyError)
_RESERVED = ("prediction", "model", "version")

Problem = tuple[str, str | None, str]  # reason, feature (or None), message


# -- the run ----------------------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread so that temp files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class Job:
    """Everything a worker process needs to score chunks; pickled once per worker."""

    store_root: Path
    name: str
    version: int
    allow_mismatch: bool
    proba: bool
    reading: Reading


@dataclass
class Totals:
    read: int = 0
    written: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def run_batch(store: ModelStore, options: BatchOptions) -> int:
    """The `batch` verb (its options parsed in serving/cli/batch.py). Returns the exit code."""
    _check_options(options)
    version = resolve_version(store, options.name, options.version, options.alias)
    allow = Settings.from_env().allow_version_mismatch
    loaded = load_model(store, options.name, version, allow)
    if options.proba and not loaded.can_proba:
        raise InvalidInput(
            f"--proba needs a classifier with predict_proba; "
            f"{loaded.name} v{loaded.version} is a {loaded.task}"
        )
    output = None if options.output == STDIO else Path(options.output)
    rejects = _rejects_path(options.rejects, output, options.name)
    if output is not None and rejects.resolve() == output.resolve():
        raise InvalidInput("the rejects file cannot be the output file")
    label = f"batch {options.name} v{version}"
    try:
        with _sigterm_raises(), batch_io.open_source(options.input) as source:
            reading = _reading(loaded, options, source.fmt)
            job = Job(store.root, options.name, version, allow, options.proba, reading)
            progress = batch_io.Progress(
                label, sys.stderr, batch_io.parquet_rows(source), source.size, options.log_every
            )
            size = options.chunk_size or default_chunk_size(loaded.schema.n_features, source.fmt)
            fmt = options.format or batch_io.format_of(options.output) or source.fmt
            with _targets(output, rejects) as targets, progress:
                chunks = batch_io.read_chunks(source, reading, size)
                totals = _stream(job, loaded, chunks, options.workers, fmt, targets, progress)
                return _finish(label, totals, progress, options, targets, output, rejects)
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"{label}: interrupted ({name}): no output or rejects file written", file=sys.stderr)
        return 128 + signum


def _check_options(options: BatchOptions) -> None:
    if not 0.0 <= options.max_reject_rate <= 1.0:
        raise InvalidInput(
            f"--max-reject-rate must be between 0 and 1, not {options.max_reject_rate}"
        )
    for option, value in (("--workers", options.workers), ("--chunk-size", options.chunk_size)):
        if value is not None and value < 1:
            raise InvalidInput(f"{option} must be at least 1, not {value}")
    if options.log_every < 0:
        raise InvalidInput(f"--log-every must be 0 or more seconds, not {options.log_every}")
    if options.id_column in _RESERVED or str(options.id_column).startswith("proba_"):
        raise InvalidInput(f"--id-column {options.id_column!r} clashes with an output column")


def resolve_version(store: ModelStore, name: str, version: int | None, alias: str | None) -> int:
    """A pinned version as given (if it exists), else the version an alias points at."""
    if version is not None:
        store.version_dir(name, version)
        return version
    store.versions(name)  # ModelNotFound for a model the store does not hold
    alias = alias or DEFAULT_ALIAS
    aliases = store.read_deployment(name)["aliases"]
    if alias not in aliases:
        known = ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "none"
        raise ModelNotFound(f"model {name!r} has no alias {alias!r} (aliases: {known})")
    return aliases[alias]


def load_model(store: ModelStore, name: str, version: int, allow_mismatch: bool) -> LoadedModel:
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


def default_chunk_size(n_features: int, fmt: str = "csv") -> int:
    """About two million values per chunk (16 MB of float64), 1,000 to 100,000 rows; a tenth
    of that for JSON Lines, whose rows are Python dicts while a chunk is decoded."""
    values = 200_000 if fmt == "jsonl" else 2_000_000
    return max(1_000, min(100_000, values // max(n_features, 1)))


def _reading(loaded: LoadedModel, options: BatchOptions, fmt: str) -> Reading:
    schema = loaded.schema
    text = [n for n, k in zip(schema.names or [], schema.kinds) if k != NUMERIC]
    if options.id_column and options.id_column not in (schema.names or []):
        text.append(options.id_column)
    return Reading(fmt, schema.names, schema.n_features, text, options.id_column)


def _rejects_path(given: str | None, output: Path | None, name: str) -> Path:
    if given:
        return Path(given)
    if output is None:  # stdout: the rejects go to the current directory
        return Path(f"{name}.rejects.jsonl")
    return output.with_name(output.name + ".rejects.jsonl")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the block (a signal then is dropped: the work is done)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _targets(
    output: Path | None, rejects: Path
) -> Iterator[tuple[batch_io.Target, batch_io.Target]]:
    """The output and rejects temp files; both removed if the block does not finish."""
    opened: list[batch_io.Target] = []
    try:
        opened.append(batch_io.Target(output))
        opened.append(batch_io.Target(rejects))
        yield opened[0], opened[1]
    except BaseException:
        for target in opened:
            target.discard()
        raise


def _stream(
    job: Job,
    loaded: LoadedModel,
    chunks: Iterator[RawChunk],
    workers: int,
    fmt: str,
    targets: tuple[batch_io.Target, batch_io.Target],
    progress: batch_io.Progress,
) -> Totals:
    output, rejects = targets
    writer = batch_io.TableWriter(output.handle, fmt)
    totals = Totals()
    writes = batch_io.BackgroundWrites()  # writing chunk n overlaps reading chunk n+1
    try:
        # closing(): on an error, the worker pool stops here, not whenever it is freed.
        with contextlib.closing(_scored(job, loaded, chunks, workers)) as results:
            for chunk, scored in results:
                _count(totals, chunk, scored)
                writes.submit(functools.partial(_write_chunk, scored, writer, rejects.handle))
                progress.update(totals.read, chunk.position)
        writes.close()  # every chunk written, or the first write error raised
    except BaseException:
        writes.abort()  # nothing is written after this: the targets can be discarded
        raise
    writer.close(Scorer(loaded, job).empty_schema())
    if totals.read != totals.written + totals.rejected:  # pragma: no cover - a bug, loudly
        raise RuntimeError(f"lost rows: {totals}")
    return totals


def _write_chunk(scored: Scored, writer: batch_io.TableWriter, rejects: Any) -> None:
    if scored.table.num_rows:
        writer.write(scored.table)
    batch_io.write_rejects(rejects, scored.rejects)


def _count(totals: Totals, chunk: RawChunk, scored: Scored) -> None:
    totals.read += chunk.rows
    totals.written += scored.table.num_rows
    totals.rejected += len(scored.rejects)
    totals.reasons.update(r["reason"] for r in scored.rejects)


def _finish(
    label: str,
    totals: Totals,
    progress: batch_io.Progress,
    options: BatchOptions,
    targets: tuple[batch_io.Target, batch_io.Target],
    output: Path | None,
    rejects: Path,
) -> int:
    seconds = time.monotonic() - progress.started
    rate = totals.rejected / totals.read if totals.read else 0.0
    too_many = rate > options.max_reject_rate
    out_target, rejects_target = targets
    with _uninterrupted():  # an interrupt now would leave one file renamed and not the other
        rejects_target.commit()  # first: an output file always has its rejects file
        if too_many:
            out_target.discard()
        else:
            out_target.commit()
    progress.finish()  # clear the bar before the summary
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(totals.reasons.items()))
    print(
        f"{label}: {totals.read:,} rows read, {totals.written:,} written, "
        f"{totals.rejected:,} rejected ({rate:.2%}{': ' + reasons if reasons else ''}) "
        f"in {seconds:.2f} s ({totals.read / max(seconds, 1e-9):,.0f} rows/s); "
        f"output {output or 'stdout'}, rejects {rejects}",
        file=sys.stderr,
    )
    if too_many:
        kept = "output not kept" if output is not None else "output already streamed to stdout"
        limit = options.max_reject_rate
        print(
            f"error: reject rate {rate:.2%} is above --max-reject-rate {limit:.2%} "
            f"({kept}; see {rejects})",
            file=sys.stderr,
        )
        return EXIT_TOO_MANY_REJECTS
    return 0


# -- scoring chunks, here or in worker processes ----------------------------------------------


@dataclass
class Scored:
    table: pa.Table
    rejects: list[dict[str, Any]]


def _scored(
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


class Scorer:
    """Decode, validate and predict one chunk; build its output table and its rejects."""

    def __init__(self, loaded: LoadedModel, job: Job) -> None:
        self._loaded, self._job = loaded, job
        self._id_name = job.reading.id_column or "row"
        classes = loaded.classes or []
        self._proba_names = [f"proba_{c}" for c in classes] if job.proba else []

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
        return pa.schema(
            [
                (self._id_name, id_type),
                ("prediction", pa.array(classes).type if classes else pa.float64()),
                *[(name, pa.float64()) for name in self._proba_names],
                ("model", pa.string()),
                ("version", pa.int64()),
            ]
        )

    def _predict(self, features: Any) -> tuple[np.ndarray, np.ndarray | None]:
        model = self._loaded.runner  # the model, or a numpy kernel verified to answer the same
        with warnings.catch_warnings():
            # A model fitted on a DataFrame and fed the equivalent array (see loader.prepare).
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            predictions = np.asarray(model.predict(features))
            probabilities = np.asarray(model.predict_proba(features)) if self._job.proba else None
        return predictions, probabilities

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
        columns: dict[str, Any] = {self._id_name: key, "prediction": pa.array(predictions)}
        for j, name in enumerate(self._proba_names):
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


# -- validation ------------------------------------------------------------------------------


def validate(decoded: Decoded, schema: InputSchema) -> tuple[Any, np.ndarray, dict[int, Problem]]:
    """The model input for the rows that pass, their mask, and the first problem of the others."""
    problems: dict[int, Problem] = {
        i: ("malformed_row", None, m) for i, m in decoded.broken.items()
    }
    columns = [
        (_numbers if kind == NUMERIC else _strings)(column, label, decoded, problems)
        for column, kind, label in zip(decoded.fields, schema.kinds, schema.labels)
    ]
    ok = np.ones(decoded.rows, dtype=bool)
    if problems:
        ok[list(problems)] = False
    every = bool(ok.all())
    if schema.numeric_only:
        matrix = np.empty((decoded.rows, schema.n_features))
        for j, column in enumerate(columns):
            matrix[:, j] = column
        return schema.to_model_input(matrix if every else matrix[ok]), ok, problems
    data = {label: c if every else c[ok] for label, c in zip(schema.labels, columns)}
    if schema.frame:
        return pd.DataFrame(data, columns=schema.names), ok, problems
    return np.column_stack(list(data.values())).astype(object), ok, problems


def _numbers(column: Field, label: str, decoded: Decoded, problems: dict[int, Problem]) -> Any:
    """float64 values (NaN where a row is bad); each bad row's first problem into `problems`."""
    values = column.values
    found: dict[int, Problem] = {}
    if values.dtype.kind in "fiu":
        floats = values.astype(np.float64, copy=False)
    elif values.dtype.kind == "b":
        floats = np.full(len(values), np.nan)
        found = {i: _wrong(label, "a boolean") for i in range(len(values))}
    elif decoded.text_numbers:
        floats = _parse_text(values, label, found)
    else:
        floats = _coerce_objects(values.astype(object, copy=False), label, found)
    bad = ~np.isfinite(floats)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            if i not in problems:
                problems[i] = found.get(i) or _not_finite(floats[i], column, i, decoded, label)
    return floats


def _parse_text(values: np.ndarray, label: str, found: dict[int, Problem]) -> np.ndarray:
    """CSV: a column with a non-number in it arrives as text; parse the numbers in it."""
    parsed = pd.to_numeric(pd.Series(values, copy=False), errors="coerce")
    floats = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    for i in np.flatnonzero(np.isnan(floats)).tolist():
        if isinstance(values[i], str):
            found[i] = _wrong(label, _describe(values[i]))
    return floats


def _coerce_objects(values: np.ndarray, label: str, found: dict[int, Problem]) -> np.ndarray:
    """JSON values: numbers pass; strings, booleans, nulls and absent keys are named."""
    if pd.api.types.infer_dtype(values, skipna=False) in (
        "floating",
        "integer",
        "mixed-integer-float",
    ):
        try:
            return values.astype(np.float64)
        except OverflowError:
            pass
    floats = np.full(len(values), np.nan)
    for i, value in enumerate(values.tolist()):
        kind = type(value)
        if kind is float or kind is int:
            try:
                floats[i] = value
            except OverflowError:
                found[i] = _wrong(label, "an integer outside the float64 range")
        elif value is ABSENT:
            found[i] = ("missing_feature", label, f"feature {label!r} is missing")
        elif value is None:
            found[i] = ("missing_value", label, f"feature {label!r}: expected a number, got null")
        else:
            found[i] = _wrong(label, _describe(value))
    return floats


def _not_finite(value: float, column: Field, i: int, decoded: Decoded, label: str) -> Problem:
    if column.nulls is not None and column.nulls[i]:
        return "missing_value", label, f"feature {label!r}: expected a number, got null"
    if np.isnan(value) and decoded.nan_is_missing:
        return "missing_value", label, f"feature {label!r}: missing value (empty or NA)"
    shown = "NaN" if np.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return "not_finite", label, f"feature {label!r}: expected a finite number, got {shown}"


def _strings(column: Field, label: str, decoded: Decoded, problems: dict[int, Problem]) -> Any:
    """Categorical values: strings pass; anything else is named (bad rows are dropped later)."""
    values = column.values.astype(object, copy=False)
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values
    for i, value in enumerate(values.tolist()):
        if type(value) is str or i in problems:
            continue
        if value is ABSENT:
            problems[i] = ("missing_feature", label, f"feature {label!r} is missing")
        elif value is None or (decoded.nan_is_missing and value != value):
            problems[i] = ("missing_value", label, f"feature {label!r}: missing value")
        else:
            problems[i] = _wrong(label, _describe(value), "a string (categorical feature)")
    return values


def _wrong(label: str, got: str, expected: str = "a finite number") -> Problem:
    return "wrong_type", label, f"feature {label!r}: expected {expected}, got {got}"


def _describe(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return f"a string ({value if len(value) <= 40 else value[:37] + '...'!r})"
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, (int, float, np.number)):
        return "a number"
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")
