"""A deadline on one prediction (`SERVING_REQUEST_TIMEOUT`): SIGALRM in a sync worker.

gunicorn's sync workers handle each request in the process's main thread, where Python runs a
signal handler between two bytecodes: the alarm's handler raises RequestTimeout, which unwinds
the prediction like any error, so the client gets a 504 in its protocol's shape and the worker
serves the next request. Arming costs a `setitimer` call and a dict entry per prediction.

gevent workers run every request in a greenlet on that same main OS thread, so the alarm
works there too, with one deadline per greenlet: the timer is set for the earliest. When it
fires, the overdue greenlet that runs gets RequestTimeout raised; an overdue one that waits
(a model that sleeps or does I/O under gevent) gets it thrown in through gevent's hub, the way
`gevent.Timeout` does; a plain greenlet that waits is tried again a moment later.

Limits: one long call into C (a single huge matrix product) is interrupted only when it
returns; in a thread (gthread workers, a test client in a thread) there is no alarm and no
deadline, and gunicorn's own `timeout` (which kills the worker) stays the last resort.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from greenlet import getcurrent

from serving.errors import ServingError


class RequestTimeout(ServingError):
    """The prediction ran past SERVING_REQUEST_TIMEOUT; the worker lives on."""

    status_code = 504
    code = "request_timeout"


# The armed deadlines of this process: greenlet -> (monotonic expiry, seconds allowed).
_deadlines: dict[Any, tuple[float, float]] = {}
_process: dict[str, int] = {"pid": -1, "main": -1}
_REAL, _setitimer, _now = signal.ITIMER_REAL, signal.setitimer, time.monotonic
# Seconds before the next look when an overdue greenlet cannot be reached yet.
_RETRY_S = 0.01


def _timeout(seconds: float) -> RequestTimeout:
    return RequestTimeout(
        f"the prediction took longer than SERVING_REQUEST_TIMEOUT={seconds:g} s",
        {"timeout_s": seconds},
    )


def _expired(signum: int, frame: Any) -> None:
    now, current = _now(), getcurrent()
    mine = None
    for owner, (expiry, seconds) in list(_deadlines.items()):
        if expiry > now:
            continue
        if owner is current:
            mine = seconds
        elif not _throw_into(owner, seconds):
            continue  # a plain greenlet that waits: looked at again in _RETRY_S
        del _deadlines[owner]
    _schedule(now)
    if mine is not None:
        raise _timeout(mine)


def _throw_into(owner: Any, seconds: float) -> bool:
    """Have gevent's hub raise RequestTimeout in the waiting `owner`; False when it cannot."""
    gevent = sys.modules.get("gevent")
    if gevent is None or not isinstance(owner, gevent.Greenlet) or owner.dead:
        return False
    owner.kill(_timeout(seconds), block=False)
    return True


def _schedule(now: float) -> None:
    """The timer at the earliest deadline left (none: off)."""
    if not _deadlines:
        _setitimer(_REAL, 0)
        return
    earliest = min(expiry for expiry, _ in _deadlines.values())
    _setitimer(_REAL, max(earliest - now, _RETRY_S))


def arm(seconds: float | None) -> bool:
    """Raise RequestTimeout in this greenlet once `seconds` pass; False when it cannot (not the
    main thread, or no deadline). Whoever arms calls `disarm()` in a `finally`."""
    if not seconds or (_process["pid"] != os.getpid() and not _install()):
        return False
    # The OS thread, not threading's view of it: gevent makes every greenlet a "thread".
    if threading.get_native_id() != _process["main"]:
        return False
    now = _now()
    _deadlines[getcurrent()] = (now + seconds, seconds)
    if len(_deadlines) == 1:
        _setitimer(_REAL, seconds)
    else:
        _schedule(now)
    return True


def _install() -> bool:
    """Once per process (after the fork), from its main OS thread: the alarm's handler.
    (`threading.main_thread()` may still name the parent's thread after a fork.)"""
    try:
        signal.signal(signal.SIGALRM, _expired)
    except ValueError:  # not the main thread: Python runs signal handlers only there
        return False
    _deadlines.clear()  # a parent's, copied by the fork
    _process["pid"], _process["main"] = os.getpid(), threading.get_native_id()
    return True


def disarm() -> None:
    if _deadlines.pop(getcurrent(), None) is not None and not _deadlines:
        _setitimer(_REAL, 0)
    elif _deadlines:
        _schedule(_now())


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """`arm` and `disarm` around a block (for callers off the hot path)."""
    armed = arm(seconds)
    try:
        yield
    finally:
        if armed:
            disarm()
