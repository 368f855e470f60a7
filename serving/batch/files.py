"""Input files for `serving batch`: detect formats, read chunks, decode them.

Readers yield raw chunks that are cheap to send to a worker process (a DataFrame for CSV, the
raw lines for JSON Lines, a RecordBatch for Parquet); `decode` turns one into one numpy column
per feature where it runs. Writing is `serving.batch.writing`, progress `serving.batch.progress`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serving.errors import InvalidInput

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
        raise InvalidInput(f"cannot read the Parquet input: {one_line(exc)}") from None


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
        raise InvalidInput(f"cannot read the CSV input: {one_line(exc)}") from None


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


def one_line(exc: BaseException) -> str:
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
