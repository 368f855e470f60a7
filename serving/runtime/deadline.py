"""A deadline on one prediction (`SERVING_REQUEST_TIMEOUT`): SIGALRM in a sync worker.

gunicorn's sync workers handle each request in the process's main thread, where Python runs a
signal handler between two bytecodes: the alarm's handler raises RequestTimeout, which unwinds
the prediction like any error, so the client gets a 504 in its protocol's shape and the worker
serves the next request. Arming costs two `setitimer` calls per prediction.

Limits: one long call into C (a single huge matrix product) is interrupted only when it
returns; in a thread (gthread workers, a test client in a thread) there is no alarm and no
deadline, and gunicorn's own `timeout` (which kills the worker) stays the last resort.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from serving.errors import ServingError


class RequestTimeout(ServingError):
    """The prediction ran past SERVING_REQUEST_TIMEOUT; the worker lives on."""

    status_code = 504
    code = "request_timeout"


_state: dict[str, Any] = {"armed": False, "seconds": 0.0, "pid": -1}
_MAIN = threading.main_thread()
_REAL, _setitimer = signal.ITIMER_REAL, signal.setitimer


def _expired(signum: int, frame: Any) -> None:
    if _state["armed"]:
        _state["armed"] = False
        raise RequestTimeout(
            f"the prediction took longer than SERVING_REQUEST_TIMEOUT={_state['seconds']:g} s",
            {"timeout_s": _state["seconds"]},
        )


def arm(seconds: float | None) -> bool:
    """Raise RequestTimeout in this thread once `seconds` pass; False when it cannot (not the
    main thread, or no deadline). Whoever arms calls `disarm()` in a `finally`."""
    if not seconds or threading.current_thread() is not _MAIN:
        return False
    if _state["pid"] != os.getpid():  # once per process, after the fork
        signal.signal(signal.SIGALRM, _expired)
        _state["pid"] = os.getpid()
    _state["seconds"], _state["armed"] = seconds, True
    _setitimer(_REAL, seconds)
    return True


def disarm() -> None:
    _state["armed"] = False
    _setitimer(_REAL, 0)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """`arm` and `disarm` around a block (for callers off the hot path)."""
    armed = arm(seconds)
    try:
        yield
    finally:
        if armed:
            disarm()
