"""Writing the outputs of `serving batch` atomically: temp files, tables, rejects, in order.

Outputs go to a temp file beside the final path and are renamed onto it only by `commit`, so an
interrupted or failed run never leaves a file at the final path. Writes run on one background
thread, so writing chunk n overlaps reading chunk n+1.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from serving.batch.files import one_line
from serving.errors import InvalidInput
from serving.store.fsutil import fsync_dir


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
        while (job := self._next()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # raised in the main thread
                    self._error = exc

    def _next(self) -> Callable[[], None] | None:
        """The next job. Polls: a Ctrl-C (KeyboardInterrupt) raised in the main thread inside
        `Queue.put`'s notify can lose this thread's wake-up, and a plain `get()` then waits
        for ever while the main thread waits for it (seen under load)."""
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                continue

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
            f"a column changes type between chunks ({table.schema} vs {schema}): {one_line(exc)}"
        ) from None


def write_rejects(handle: BinaryIO, rejects: list[dict[str, Any]]) -> None:
    if rejects:
        flags = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
        handle.write(b"".join(orjson.dumps(r, option=flags) for r in rejects))
