"""HUP without a stall: the old workers stop only once the new ones have loaded their models.

gunicorn's reload (HUP) spawns a new set of workers and at once stops the old ones; the new
ones then spend a second or more importing the libraries and loading every deployed model
before they accept a connection, and meanwhile nobody answers (measured: 1.8 s on a quiet
machine, ~9 s on a loaded one). Here the arbiter's `manage_workers`, which stops the surplus
old workers, first waits after a reload until every new worker has said it is ready (a marker
file its `post_worker_init` writes, in the directory every worker sees:
PROMETHEUS_MULTIPROC_DIR), or has died, or `timeout` (gunicorn's, the longest a boot may take)
has passed. Meanwhile the old workers keep serving; the listening socket is shared, so the
queue is taken by whichever worker accepts first.

gunicorn.conf.py: `on_starting` calls `install`, `on_reload` calls `reloading`, and
`post_worker_init` calls `mark_ready`. (A reload re-reads gunicorn.conf.py, so the state lives
on the arbiter, which stays.)
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

READY_PREFIX = "worker-ready."
# How often the master looks for the new workers' markers while it waits.
_LOOK_EVERY = 0.05


def ready_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{READY_PREFIX}{pid}")


def mark_ready(directory: str | None) -> None:
    """In a worker, once its app and models are loaded (outside gunicorn: nothing to do)."""
    if directory:
        with open(ready_path(directory, os.getpid()), "w"):
            pass


def install(server: Any, directory: str) -> None:
    """Make the arbiter's `manage_workers` wait for new workers after a reload."""
    stop_surplus = server.manage_workers
    server.serving_reload_age = None

    def manage_workers() -> None:
        age = server.serving_reload_age
        if age is not None:
            server.serving_reload_age = None
            waited = wait_for_new_workers(server, directory, age, server.cfg.timeout)
            server.log.info("reload: new workers ready after %.2f s, old ones stop", waited)
        stop_surplus()

    server.manage_workers = manage_workers


def reloading(server: Any) -> None:
    """From `on_reload`, before the new workers are spawned: those born after now are new."""
    server.serving_reload_age = server.worker_age


def wait_for_new_workers(server: Any, directory: str, age: int, timeout: float) -> float:
    """Seconds waited until every worker younger than `age` is ready or gone (at most
    `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        new = [pid for pid, worker in list(server.WORKERS.items()) if worker.age > age]
        if all(os.path.exists(ready_path(directory, pid)) for pid in new):
            break
        time.sleep(_LOOK_EVERY)
    return time.monotonic() - started


def forget(directory: str | None, pid: int) -> None:
    """From `child_exit` in the master: a worker that is gone is not ready."""
    if directory:
        with contextlib.suppress(FileNotFoundError):
            os.remove(ready_path(directory, pid))
