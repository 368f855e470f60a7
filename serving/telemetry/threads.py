"""Background threads that stay operating-system threads under gevent workers.

gunicorn's gevent worker monkey-patches `threading`: a `threading.Thread` started afterwards is
a greenlet on the worker's one OS thread. A greenlet that calls into C and blocks there (an
SQLite commit waiting on another process's lock or on fsync, a model load) stops every
connection of the worker until it returns. `start_daemon` runs such a loop on a real OS thread
instead (gevent's thread pool, which also makes the patched Event and Lock work across the two
threads); without gevent it is a plain daemon `threading.Thread`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol


class Daemon(Protocol):
    """What the owners of a background loop use: stop it (their own Event), then join it."""

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class _PoolThread:
    """One loop on a gevent thread pool of its own (one OS thread)."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        from gevent.threadpool import ThreadPool

        self.name = name
        self._pool: Any = ThreadPool(1)
        self._result: Any = self._pool.spawn(target)

    def join(self, timeout: float | None = None) -> None:
        self._result.wait(timeout)  # cooperative: other greenlets run meanwhile
        if self._result.ready():
            self._pool.kill()

    def is_alive(self) -> bool:
        return not self._result.ready()


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patched `threading`."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def start_daemon(target: Callable[[], None], name: str) -> Daemon:
    """Run `target` on a new OS thread (a daemon: it does not hold up the process's exit)."""
    if gevent_patched():
        return _PoolThread(target, name)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
