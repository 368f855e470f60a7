"""Logging: one dictConfig (JSON lines on stdout) shared by the app and gunicorn.

The per-request line (`request_line`) skips the logging machinery where the configuration is
ours (about 20 µs a line: a LogRecord, the caller's frame, pythonjsonlogger's generic pass, a
write and a flush): the same JSON object, built directly, queued in `JsonLinesHandler` and
written with the others every `FLUSH_EVERY` seconds (one write instead of one per request).
Every other record is written at once, after the queued lines, so the order holds. A worker
killed with -9 loses at most the last `FLUSH_EVERY` seconds of request lines.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import logging.config
import os
import threading
from typing import Any

import orjson

_FORMAT = "%(levelname)s %(name)s %(process)d %(message)s"
FLUSH_EVERY = 0.2  # seconds a request line may wait in the queue
_FLUSH_BYTES = 65536  # or until this much is queued
REQUEST_LOGGER = logging.getLogger("serving.request")
_UTC = dt.UTC


# The id of the request being handled (set by the web layer's hooks; None between requests).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "serving_request_id", default=None
)


class RequestContextFilter(logging.Filter):
    """Adds the current request id to every record logged while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stdout's handler: a record is written and flushed at once, as by StreamHandler, after
    the request lines queued by `queue_line`; those are written every `FLUSH_EVERY` seconds."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._queued: list[str] = []
        self._queued_bytes = 0
        self._flusher_pid: int | None = None  # the process whose flusher thread runs

    def queue_line(self, line: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._queued.append(line)
            self._queued_bytes += len(line)
            if self._queued_bytes >= _FLUSH_BYTES:
                self._write_queued()
                self.stream.flush()
        if self._flusher_pid != os.getpid():
            self._start_flusher()

    def emit(self, record: logging.LogRecord) -> None:  # called with the lock held
        self._write_queued()
        super().emit(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_queued()
        super().flush()

    def _write_queued(self) -> None:
        if not self._queued:
            return
        text, self._queued, self._queued_bytes = "".join(self._queued), [], 0
        try:
            self.stream.write(text)
        except Exception:  # stdout gone or full: like StreamHandler, never fail the caller
            logging.lastResort.handle(
                logging.makeLogRecord({"msg": "request log lines lost: stdout failed"})
            )

    def _start_flusher(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._flusher_pid == os.getpid():
                return
            self._flusher_pid = os.getpid()  # a forked worker starts its own
        threading.Thread(target=self._flush_forever, name="log-flusher", daemon=True).start()

    def _flush_forever(self) -> None:
        tick = threading.Event()  # never set: a sleep that gevent's patching also serves
        while True:
            tick.wait(FLUSH_EVERY)
            with contextlib.suppress(Exception):  # the next round tries again
                self.flush()


def _queue_of_ours() -> JsonLinesHandler | None:
    """The handler request lines may be queued in: the configuration is ours (one
    JsonLinesHandler on the root, the request logger adds none and takes INFO); else None."""
    handlers = logging.root.handlers
    if len(handlers) != 1 or REQUEST_LOGGER.handlers or not REQUEST_LOGGER.isEnabledFor(20):
        return None
    handler = handlers[0]
    if type(handler) is not JsonLinesHandler or handler.level > logging.INFO:
        return None
    return handler


def request_line(fields: dict[str, Any]) -> None:
    """Log the request line `fields` (logger serving.request, message "request"): queued as
    the formatter would write it where the configuration is ours, else through `logging`."""
    handler = _queue_of_ours()
    if handler is None:
        REQUEST_LOGGER.info("request", extra=fields)
        return
    head = {"level": "INFO", "logger": "serving.request", "process": os.getpid()}
    line = {**head, "message": "request", **fields, "timestamp": dt.datetime.now(_UTC)}
    handler.queue_line(orjson.dumps(line, default=str).decode() + "\n")


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """The one logging configuration; `gunicorn.conf.py` passes it as `logconfig_dict`."""
    handler = {
        "class": "serving.telemetry.logs.JsonLinesHandler",
        "formatter": "json",
        "filters": ["request_context"],
        "stream": "ext://sys.stdout",
    }
    quiet = {"level": level, "handlers": ["stdout"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_context": {"()": "serving.telemetry.logs.RequestContextFilter"}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.orjson.OrjsonFormatter",  # half the cost of stdlib json
                "fmt": _FORMAT,
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": True,  # ISO 8601 UTC, as "timestamp"
            }
        },
        "handlers": {"stdout": handler},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": quiet,
            # The app logs one line per request itself; gunicorn's access line would be a second.
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
            "werkzeug": {"level": "WARNING"},
        },
    }


def init_logging(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
