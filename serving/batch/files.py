"""Files for `serving batch`: detect formats, read chunks, decode them, write tables atomically.

Readers yield raw chunks that are cheap to send to a worker process (a DataFrame for CSV, the
raw lines for JSON Lines, a RecordBatch for Parquet); `decode` turns one into one numpy column
per feature where it runs. Outputs go to a temp file beside the final path and are renamed onto
it only by `commit`, so an interrupted or failed run never leaves a file at the final path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from serving.errors import InvalidInput
from serving.store.fsutil import fsync_dir

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
STDIO = "-"


class _Absent:
    """A feature key missing from a JSON object (unlike a null value)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


def format_of(name: str) -> str | None:
    """The format an extension names, or None (stdin/stdout, unknown extension)."""
    return None if name == STDIO else _EXTENSIONS.get(Path(name).suffix.lower())


def sniff(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[") else "csv"


@dataclass
class Source:
    fmt: str
    handle: BinaryIO
    size: int | None  # bytes, when known: progress of CSV and JSON Lines


@contextlib.contextmanager
def open_source(name: str) -> Iterator[Source]:
    """An input file or stdin, with its format (extension, else sniffed from the first bytes).

    Parquet needs to seek to its footer: from stdin it is spooled to a temp file first.
    """
    with contextlib.ExitStack() as stack:
        if name == STDIO:
            handle: Any = sys.stdin.buffer
            fmt = sniff(handle.peek(64)[:64])
        else:
            handle = stack.enter_context(open(name, "rb"))
            fmt = format_of(name) or sniff(handle.read(64))
            handle.seek(0)
        if fmt == "parquet" and name == STDIO:
            spool = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(handle, spool, 1 << 20)
            spool.seek(0)
            handle = spool
        size = os.fstat(handle.fileno()).st_size if name != STDIO else None
        yield Source(fmt, handle, size or None)


@dataclass
class RawChunk:
    start: int  # row number (0-based, in the input) of the first row
    rows: int
    payload: Any
    position: int | None  # bytes of input consumed so far, when known


@dataclass
class Reading:
    """How to read features out of a chunk; sent once to each worker."""

    fmt: str
    names: list[str] | None  # feature columns by name; None: positional (unnamed models)
    n_features: int
    text_columns: list[str]  # read as strings in CSV: categorical features and the id
    id_column: str | None


def read_chunks(source: Source, reading: Reading, chunk_size: int) -> Iterator[RawChunk]:
    readers = {"csv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}
    return readers[source.fmt](source, reading, chunk_size)


def parquet_rows(source: Source) -> int | None:
    if source.fmt != "parquet":
        return None
    with _parquet_errors():
        return pq.ParquetFile(source.handle).metadata.num_rows


@contextlib.contextmanager
def _parquet_errors() -> Iterator[None]:
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowIOError) as exc:
        raise InvalidInput(f"cannot read the Parquet input: {_one_line(exc)}") from None


def _needed(reading: Reading) -> list[str] | None:
    if reading.names is None:
        return None
    extra = (
        [reading.id_column] if reading.id_column and reading.id_column not in reading.names else []
    )
    return reading.names + extra


def _csv_chunks(source: Source, reading: Reading, chunk_size: int) -> Iterator[RawChunk]:
    # No `usecols`: with it pandas silently drops the extra fields of a ragged line (a stray
    # delimiter shifts values into the wrong features); without it that line stops the run.
    # index_col=False: never take a first column without a header name as the index.
    needed = _needed(reading) or []
    try:
        frames = pd.read_csv(
            source.handle,
            chunksize=chunk_size,
            dtype=dict.fromkeys(reading.text_columns, str),
            index_col=False,
            low_memory=False,
        )
        start = 0
        for frame in frames:
            missing = [c for c in needed if c not in frame.columns]
            if missing:
                raise InvalidInput(
                    f"the CSV input lacks columns the model needs: {', '.join(missing[:10])}"
                )
            yield RawChunk(start, len(frame), frame, _tell(source))
            start += len(frame)
    except pd.errors.EmptyDataError:
        return
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the CSV input: {_one_line(exc)}") from None


def _jsonl_chunks(source: Source, reading: Reading, chunk_size: int) -> Iterator[RawChunk]:
    lines: list[bytes] = []
    start = position = 0
    for line in source.handle:
        position += len(line)
        if not line.strip():  # blank lines are not records
            continue
        lines.append(line)
        if len(lines) == chunk_size:
            yield RawChunk(start, len(lines), lines, position)
            start, lines = start + len(lines), []
    if lines:
        yield RawChunk(start, len(lines), lines, position)


def _parquet_chunks(source: Source, reading: Reading, chunk_size: int) -> Iterator[RawChunk]:
    with _parquet_errors():
        # pre_buffer (the default) keeps the ranges it read ahead: memory grew chunk by chunk.
        parquet = pq.ParquetFile(source.handle, pre_buffer=False, buffer_size=1 << 20)
        needed = _needed(reading)
        missing = [c for c in needed or [] if c not in parquet.schema_arrow.names]
        if missing:
            raise InvalidInput(
                f"the Parquet input lacks columns the model needs: {', '.join(missing[:10])}"
            )
        start = 0
        for batch in parquet.iter_batches(batch_size=chunk_size, columns=needed):
            yield RawChunk(start, batch.num_rows, batch, None)
            start += batch.num_rows


def _tell(source: Source) -> int | None:
    try:
        return source.handle.tell()
    except OSError:
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- decoding (in the worker) ---------------------------------------------------------------


@dataclass
class Field:
    values: np.ndarray
    nulls: np.ndarray | None = None  # True where the input holds a null (Parquet)


@dataclass
class Decoded:
    rows: int
    fields: list[Field]  # one per feature, in the model's order
    ids: pa.Array | None  # the --id-column values
    broken: dict[int, str]  # rows that could not be read at all: offset -> why
    text_numbers: bool  # numbers arrive as text (CSV): a string may still be a number
    nan_is_missing: bool  # CSV: an empty field or an NA marker reads as NaN


def decode(chunk: RawChunk, reading: Reading) -> Decoded:
    decoders = {"csv": _decode_csv, "jsonl": _decode_jsonl, "parquet": _decode_parquet}
    return decoders[reading.fmt](chunk, reading)


def _feature_columns(columns: list[str], reading: Reading) -> list[str]:
    if reading.names is not None:
        return reading.names
    positional = [c for c in columns if c != reading.id_column]
    if len(positional) != reading.n_features:
        raise InvalidInput(
            f"the model has no feature names and takes {reading.n_features} columns; the input "
            f"has {len(positional)} (besides the id column)"
        )
    return positional


def _decode_csv(chunk: RawChunk, reading: Reading) -> Decoded:
    frame: pd.DataFrame = chunk.payload
    columns = _feature_columns(list(frame.columns), reading)
    fields = [Field(frame[name].to_numpy()) for name in columns]
    ids = None
    if reading.id_column:
        ids = pa.array(frame[reading.id_column].to_numpy(dtype=object, na_value=None))
    return Decoded(chunk.rows, fields, ids, {}, text_numbers=True, nan_is_missing=True)


def _decode_parquet(chunk: RawChunk, reading: Reading) -> Decoded:
    batch: pa.RecordBatch = chunk.payload
    columns = _feature_columns(batch.schema.names, reading)
    fields = []
    for name in columns:
        array = batch.column(name)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
        fields.append(Field(array.to_numpy(zero_copy_only=False), nulls))
    ids = batch.column(reading.id_column) if reading.id_column else None
    return Decoded(chunk.rows, fields, ids, {}, text_numbers=False, nan_is_missing=False)


def _decode_jsonl(chunk: RawChunk, reading: Reading) -> Decoded:
    keys: list[Any] = reading.names or list(range(reading.n_features))
    getter = itemgetter(*keys) if len(keys) > 1 else lambda record: (record[keys[0]],)
    rows: list[tuple[Any, ...]] = []
    ids: list[Any] = []
    broken: dict[int, str] = {}
    for i, line in enumerate(chunk.payload):
        record, problem = _record(line, keys, reading.names is not None)
        if problem:
            broken[i] = problem
        try:
            rows.append(getter(record))
        except KeyError:
            rows.append(tuple(record.get(key, ABSENT) for key in keys))
        if reading.id_column:
            ids.append(record.get(reading.id_column))
    columns = zip(*rows) if rows else ([] for _ in keys)
    fields = [Field(np.fromiter(c, dtype=object, count=len(rows))) for c in columns]
    return Decoded(
        chunk.rows,
        fields,
        _json_ids(ids) if reading.id_column else None,
        broken,
        text_numbers=False,
        nan_is_missing=False,
    )


def _record(line: bytes, keys: list[Any], named: bool) -> tuple[dict[Any, Any], str | None]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:  # NaN / Infinity tokens: read them, so validation names them as such
            value = json.loads(line)
        except ValueError as exc:
            return {}, f"not valid JSON: {exc}"
    if type(value) is dict:
        if named:
            return value, None
        return {}, f"this model has no feature names: write each row as a list of {len(keys)}"
    if type(value) is list:
        if len(value) != len(keys):
            return {}, f"expected a list of {len(keys)} values, got {len(value)}"
        return dict(zip(keys, value)), None
    return {}, "expected a JSON object (or a list of feature values)"


def _json_ids(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them all as text
        return pa.array(
            [v if v is None or type(v) is str else orjson.dumps(v).decode() for v in values],
            pa.string(),
        )


# -- writing -------------------------------------------------------------------------------


class Target:
    """One output: a temp file renamed onto `path` by `commit`, or stdout when `path` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tmp: str | None = None
        if path is None:
            self.handle: BinaryIO = sys.stdout.buffer
            return
        while True:  # not mkstemp: its 0600 would stick to the output; this honours the umask
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:  # pragma: no cover - 32 random bits
                continue
            except OSError as exc:  # name the file asked for, not the temp one
                raise OSError(exc.errno, exc.strerror, str(path)) from None
        self._tmp = str(tmp)
        self.handle = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.handle.flush()
        if self._tmp is None or self.path is None:
            return
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self._tmp, self.path)
        self._tmp = None
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        if self._tmp is None:
            with contextlib.suppress(OSError):
                self.handle.flush()
            return
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
        self._tmp = None


class BackgroundWrites:
    """Runs write calls in order in one thread, at most `ahead` waiting.

    pyarrow writes CSV and Parquet without the GIL, so while the thread writes chunk n the
    main thread reads and scores chunk n+1. The first error stops later writes and is raised
    by the next `submit` or by `close`.
    """

    def __init__(self, ahead: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=ahead)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # raised in the main thread
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._queue.put(job)

    def close(self) -> None:
        """Wait until every submitted write is done; raise the first write error."""
        self._stop()
        self._raise()

    def abort(self) -> None:
        """Skip the writes not started yet and wait for the one running, if any."""
        if self._error is None:
            self._error = RuntimeError("aborted")
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class TableWriter:
    """Writes Arrow tables in one format; the first table fixes the schema of the rest."""

    def __init__(self, handle: BinaryIO, fmt: str) -> None:
        self._handle, self._fmt = handle, fmt
        self._writer: Any = None
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self._open(table.schema)
        elif table.schema != self.schema:
            table = _conform(table, self.schema)
        if self._fmt == "jsonl":
            self._write_lines(table)
        else:
            self._writer.write_table(table)

    def _write_lines(self, table: pa.Table, rows: int = 10_000) -> None:
        """JSON Lines from slices of columns: no list of dicts for a whole chunk at once."""
        dumps, flags, names = orjson.dumps, orjson.OPT_APPEND_NEWLINE, table.column_names
        for start in range(0, table.num_rows, rows):
            part = table.slice(start, rows)
            columns = [part.column(name).to_pylist() for name in names]
            lines = (dumps(dict(zip(names, values)), option=flags) for values in zip(*columns))
            self._handle.write(b"".join(lines))

    def close(self, empty_schema: pa.Schema) -> None:
        if self.schema is None:
            self._open(empty_schema)  # no row at all: still a valid file with a header/schema
        if self._writer is not None:
            self._writer.close()

    def _open(self, schema: pa.Schema) -> None:
        self.schema = schema
        if self._fmt == "csv":
            self._writer = pacsv.CSVWriter(self._handle, schema)
        elif self._fmt == "parquet":
            self._writer = pq.ParquetWriter(self._handle, schema)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InvalidInput(
            f"a column changes type between chunks ({table.schema} vs {schema}): {_one_line(exc)}"
        ) from None


def write_rejects(handle: BinaryIO, rejects: list[dict[str, Any]]) -> None:
    if rejects:
        flags = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
        handle.write(b"".join(orjson.dumps(r, option=flags) for r in rejects))


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A redrawn bar on a terminal; plain lines every `every` seconds otherwise (logs, CI)."""

    def __init__(
        self,
        label: str,
        stream: TextIO,
        total_rows: int | None,
        total_bytes: int | None,
        every: float,
        clock: Any = time.monotonic,
    ) -> None:
        self._label, self._stream, self._clock = label, stream, clock
        self._rows_total, self._bytes_total = total_rows, total_bytes
        self._tty = _isatty(stream)
        self._every = 0.1 if self._tty else every
        self.started = self._last = clock()
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def update(self, rows: int, position: int | None) -> None:
        now = self._clock()
        if now - self._last < self._every:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = rows / elapsed
        text = f"{self._label}: {rows:,} rows, {rate:,.0f} rows/s"
        fraction = self._fraction(rows, position)
        if fraction is not None and fraction > 0:
            eta = elapsed * (1 - fraction) / fraction
            text += f", {fraction:.0%}, ETA {_clock_time(eta)}"
        if self._tty:
            self._stream.write(f"\r{_bar(fraction)} {text}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """Clear the bar (before the summary, or an error, is printed)."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    def _fraction(self, rows: int, position: int | None) -> float | None:
        if self._rows_total:
            return min(rows / self._rows_total, 1.0)
        if self._bytes_total and position is not None:
            return min(position / self._bytes_total, 1.0)
        return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _bar(fraction: float | None, width: int = 20) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _clock_time(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
