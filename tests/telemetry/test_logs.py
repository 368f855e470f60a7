"""The request line's fast path (serving/telemetry/logs.py): the same JSON object the formatter
writes, queued and written together every FLUSH_EVERY seconds, after nothing that was logged
later; through `logging` wherever the configuration is not ours. On a real pipe and a fork."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import select
import time
from collections.abc import Iterator

import pytest

from serving.telemetry import logs
from serving.telemetry.logs import FLUSH_EVERY, logging_config, request_line

FIELDS = {
    "request_id": "r-1",
    "method": "POST",
    "path": "/v1/models/iris/predict",
    "status": 200,
    "model": "iris",
    "version": 3,
    "alias": "production",
    "variant": None,
    "rows": 2,
    "duration_ms": 1.25,
}


@pytest.fixture
def pipe() -> Iterator[tuple[int, logs.JsonLinesHandler]]:
    """Our logging configuration writing into a real pipe; (read end, the handler)."""
    read, write = os.pipe()
    stream = os.fdopen(write, "w", buffering=1)
    saved = logging.root.handlers[:], logging.root.level
    logging.config.dictConfig(logging_config("INFO"))
    handler = logging.root.handlers[0]
    assert isinstance(handler, logs.JsonLinesHandler)
    handler.setStream(stream)
    try:
        yield read, handler
    finally:
        logging.root.handlers, logging.root.level = saved
        stream.close()
        os.close(read)


def _only(handler: logs.JsonLinesHandler) -> None:
    """Take out the handlers pytest adds to the root for the test's call: ours alone, as in
    a server (with another handler on the root, the line goes through `logging`)."""
    logging.root.handlers = [handler]


def _read_lines(fd: int, count: int, timeout: float) -> list[dict]:
    buffer, deadline = b"", time.monotonic() + timeout
    while buffer.count(b"\n") < count and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            buffer += os.read(fd, 65536)
    return [json.loads(line) for line in buffer.splitlines()]


def test_the_fast_line_is_the_object_the_formatter_writes(pipe: tuple) -> None:
    read, handler = pipe
    _only(handler)
    logs.REQUEST_LOGGER.info("request", extra=FIELDS)  # through logging: written at once
    request_line(FIELDS)
    handler.flush()
    slow, fast = _read_lines(read, 2, 2.0)
    assert list(fast) == list(slow)  # the same keys in the same order
    assert {k: v for k, v in fast.items() if k != "timestamp"} == {
        k: v for k, v in slow.items() if k != "timestamp"
    }
    assert fast["logger"] == "serving.request" and fast["process"] == os.getpid()
    assert fast["timestamp"].endswith("+00:00")


def test_queued_lines_are_written_together_within_the_flush_interval(pipe: tuple) -> None:
    read, handler = pipe
    _only(handler)
    started = time.monotonic()
    for i in range(50):
        request_line({**FIELDS, "request_id": f"r-{i}"})
    assert not select.select([read], [], [], 0)[0]  # queued, not written one by one
    lines = _read_lines(read, 50, 5.0)
    assert [r["request_id"] for r in lines] == [f"r-{i}" for i in range(50)]
    assert time.monotonic() - started < FLUSH_EVERY + 1.0


def test_any_other_record_is_written_at_once_after_the_queued_lines(pipe: tuple) -> None:
    read, handler = pipe
    _only(handler)
    request_line(FIELDS)
    logging.getLogger("serving.runtime.loader").info("loaded", extra={"event": "loaded"})
    first, second = _read_lines(read, 2, FLUSH_EVERY / 2)  # no wait for the flusher
    assert first["request_id"] == "r-1" and second["event"] == "loaded"


def test_a_forked_worker_flushes_its_own_lines(pipe: tuple) -> None:
    read, handler = pipe
    _only(handler)
    request_line(FIELDS)  # the parent's flusher starts
    handler.flush()
    _read_lines(read, 1, 2.0)
    pid = os.fork()
    if pid == 0:  # the child: its own flusher thread, or its lines would wait forever
        request_line({**FIELDS, "request_id": "child"})
        time.sleep(FLUSH_EVERY * 5)
        os._exit(0)
    (line,) = _read_lines(read, 1, 5.0)
    os.waitpid(pid, 0)
    assert line["request_id"] == "child" and line["process"] == pid


def test_without_our_configuration_the_line_goes_through_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="serving.request"):
        request_line(FIELDS)
    (record,) = [r for r in caplog.records if r.name == "serving.request"]
    assert record.getMessage() == "request" and record.request_id == "r-1"  # type: ignore[attr-defined]
