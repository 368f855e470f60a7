"""A deadline on one prediction (`SERVING_REQUEST_TIMEOUT`): SIGALRM in a sync worker.

gunicorn's sync workers handle each request in the process's main thread, where Python runs a
signal handler between two bytecodes: the alarm's handler raises RequestTimeout, which unwinds
the prediction like any error, so the client gets a 504 in its protocol's shape and the worker
serves the next request. Arming costs two `setitimer` calls per prediction.

gevent workers run every request in a greenlet on that same main OS thread, so the alarm
works there too. A greenlet that waits on I/O while armed lets others run: if the alarm lands in
one of them, it is re-armed for a moment instead, and raised in the greenlet that armed it.

Limits: one long call into C (a single huge matrix product) is interrupted only when it
returns; in a thread (gthread workers, a test client in a thread) there is no alarm and no
deadline, and gunicorn's own `timeout` (which kills the worker) stays the last resort. One
deadline per process: a greenlet that arms while another's deadline is armed replaces it (a
prediction rarely yields, so two rarely overlap).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from greenlet import getcurrent

from serving.errors import ServingError


class RequestTimeout(ServingError):
    """The prediction ran past SERVING_REQUEST_TIMEOUT; the worker lives on."""

    status_code = 504
    code = "request_timeout"


_state: dict[str, Any] = {"armed": False, "seconds": 0.0, "pid": -1, "main": -1, "owner": None}
_REAL, _setitimer = signal.ITIMER_REAL, signal.setitimer
# Seconds before a second try when the alarm lands in a greenlet other than the one armed.
_RETRY_S = 0.01


def _expired(signum: int, frame: Any) -> None:
    if _state["armed"]:
        if getcurrent() is not _state["owner"]:  # another greenlet runs: not its deadline
            _setitimer(_REAL, _RETRY_S)
            return
        _state["armed"] = False
        raise RequestTimeout(
            f"the prediction took longer than SERVING_REQUEST_TIMEOUT={_state['seconds']:g} s",
            {"timeout_s": _state["seconds"]},
        )


def arm(seconds: float | None) -> bool:
    """Raise RequestTimeout in this thread once `seconds` pass; False when it cannot (not the
    main thread, or no deadline). Whoever arms calls `disarm()` in a `finally`."""
    if not seconds or (_state["pid"] != os.getpid() and not _install()):
        return False
    # The OS thread, not threading's view of it: gevent makes every greenlet a "thread".
    if threading.get_native_id() != _state["main"]:
        return False
    _state["seconds"], _state["owner"], _state["armed"] = seconds, getcurrent(), True
    _setitimer(_REAL, seconds)
    return True


def _install() -> bool:
    """Once per process (after the fork), from its main OS thread: the alarm's handler.
    (`threading.main_thread()` may still name the parent's thread after a fork.)"""
    try:
        signal.signal(signal.SIGALRM, _expired)
    except ValueError:  # not the main thread: Python runs signal handlers only there
        return False
    _state["pid"], _state["main"] = os.getpid(), threading.get_native_id()
    return True


def disarm() -> None:
    _state["armed"], _state["owner"] = False, None
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
