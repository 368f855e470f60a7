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
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batch import files as batch_io
from serving.batch import writing
from serving.batch.files import STDIO, RawChunk, Reading
from serving.batch.options import BatchOptions
from serving.batch.progress import Progress
from serving.batch.scoring import Job, Scored, Scorer, load_model, scored_chunks
from serving.errors import InvalidInput, ModelNotFound
from serving.features.schema import STRING_KINDS
from serving.runtime.model import LoadedModel
from serving.settings import Settings
from serving.store.base import StoreBase
from serving.store.model_store import DEFAULT_ALIAS

EXIT_TOO_MANY_REJECTS = 3
_RESERVED = ("prediction", "score", "model", "version")
_RESERVED_PREFIXES = ("proba_", "prediction_", "score_")


# -- the run ----------------------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread so that temp files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class Totals:
    read: int = 0
    written: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def run_batch(store: StoreBase, options: BatchOptions) -> int:
    """The `batch` verb (its options parsed in serving/cli/batch.py). Returns the exit code."""
    _check_options(options)
    version = resolve_version(store, options.name, options.version, options.alias)
    allow = Settings.from_env().allow_version_mismatch
    loaded = load_model(store, options.name, version, allow)
    if options.proba and not loaded.can_proba:
        raise InvalidInput(
            f"--proba needs a classifier with predict_proba; "
            f"{loaded.name} v{loaded.version} {loaded.why_no_proba}"
        )
    if options.scores and loaded.score_method is None:
        raise InvalidInput(
            f"--scores needs a model with decision_function or score_samples; "
            f"{loaded.name} v{loaded.version} {loaded.why_no_scores}"
        )
    output = None if options.output == STDIO else Path(options.output)
    rejects = _rejects_path(options.rejects, output, options.name)
    if output is not None and rejects.resolve() == output.resolve():
        raise InvalidInput("the rejects file cannot be the output file")
    label = f"batch {options.name} v{version}"
    try:
        with _sigterm_raises(), batch_io.open_source(options.input) as source:
            reading = _reading(loaded, options, source.fmt)
            job = Job(
                store.local_root(), options.name, version, allow, options.proba, reading,
                options.scores,
            )  # fmt: skip
            progress = Progress(
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
    if options.id_column in _RESERVED or str(options.id_column).startswith(_RESERVED_PREFIXES):
        raise InvalidInput(f"--id-column {options.id_column!r} clashes with an output column")


def resolve_version(store: StoreBase, name: str, version: int | None, alias: str | None) -> int:
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


def default_chunk_size(n_features: int, fmt: str = "csv") -> int:
    """About two million values per chunk (16 MB of float64), 1,000 to 100,000 rows; a tenth
    of that for JSON Lines, whose rows are Python dicts while a chunk is decoded."""
    values = 200_000 if fmt == "jsonl" else 2_000_000
    return max(1_000, min(100_000, values // max(n_features, 1)))


def _reading(loaded: LoadedModel, options: BatchOptions, fmt: str) -> Reading:
    schema = loaded.schema
    text = [n for n, k in zip(schema.names or [], schema.kinds) if k in STRING_KINDS]
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
def _targets(output: Path | None, rejects: Path) -> Iterator[tuple[writing.Target, writing.Target]]:
    """The output and rejects temp files; both removed if the block does not finish."""
    opened: list[writing.Target] = []
    try:
        opened.append(writing.Target(output))
        opened.append(writing.Target(rejects))
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
    targets: tuple[writing.Target, writing.Target],
    progress: Progress,
) -> Totals:
    output, rejects = targets
    writer = writing.TableWriter(output.handle, fmt)
    totals = Totals()
    writes = writing.BackgroundWrites()  # writing chunk n overlaps reading chunk n+1
    try:
        # closing(): on an error, the worker pool stops here, not whenever it is freed.
        with contextlib.closing(scored_chunks(job, loaded, chunks, workers)) as results:
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


def _write_chunk(scored: Scored, writer: writing.TableWriter, rejects: Any) -> None:
    if scored.table.num_rows:
        writer.write(scored.table)
    writing.write_rejects(rejects, scored.rejects)


def _count(totals: Totals, chunk: RawChunk, scored: Scored) -> None:
    totals.read += chunk.rows
    totals.written += scored.table.num_rows
    totals.rejected += len(scored.rejects)
    totals.reasons.update(r["reason"] for r in scored.rejects)


def _finish(
    label: str,
    totals: Totals,
    progress: Progress,
    options: BatchOptions,
    targets: tuple[writing.Target, writing.Target],
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
