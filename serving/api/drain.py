"""Graceful drain on SIGTERM: readiness answers 503 "draining" for a while, every route keeps
answering, then the listen queue is emptied and gunicorn's usual graceful stop follows.

Emptying the queue: a connection the kernel accepted into the listen queue is reset when the
last copy of the listening socket closes. So before the stop the master attaches a socket
filter that drops new SYNs (a client then retries and, once the socket is closed, is refused,
which is not a reset), and waits until the workers, still running, have taken every queued
connection (Linux reports the queue's length in TCP_INFO).

The master marks the drain with a flag file in the directory every worker sees
(PROMETHEUS_MULTIPROC_DIR, set by gunicorn.conf.py), named after the master's pid: a worker asks
for its own parent's flag, so a USR2 successor master sharing the directory is not marked.
gunicorn dispatches a signal to `getattr(arbiter, "handle_" + name)`: gunicorn.conf.py's
`on_starting` installs `install(server, seconds)` as the arbiter's `handle_term`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

FLAG_PREFIX = "draining."
# The master's loop wakes at least this often during the drain to reap and replace workers.
_TICK = 0.5
# The longest the master waits for the workers to take the queued connections; sync workers
# still answer what is left when they stop (serving.api.workers.SyncWorker.drain_queue).
QUEUE_WAIT = 2.0
# Classic BPF, run on the TCP header: a SYN without ACK (a new connection) is dropped; every
# other packet (queued and open connections) passes.
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]: the flags byte
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN
    (0x06, 0, 0, 0),  # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: pass
)
_SO_ATTACH_FILTER = 26
_TCPI_UNACKED = 24  # offset of tcpi_unacked: the accept queue's length on a listening socket


def flag_path(directory: str, master_pid: int) -> str:
    return os.path.join(directory, f"{FLAG_PREFIX}{master_pid}")


def draining() -> bool:
    """Whether this worker's master has started draining (False outside gunicorn)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return bool(directory) and os.path.exists(flag_path(directory or "", os.getppid()))


def install(server: Any, seconds: float, directory: str) -> None:
    """Make the arbiter drain `seconds` on SIGTERM before its graceful stop (0: no drain)."""
    if seconds > 0:
        server.handle_term = _drain_then_stop(server, seconds, directory)


def remove_flag(directory: str) -> None:
    """At the master's exit: the flag of this master goes with it."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(flag_path(directory, os.getpid()))


def _drain_then_stop(server: Any, seconds: float, directory: str) -> Callable[[], None]:
    def handle_term() -> None:
        path = flag_path(directory, os.getpid())
        with open(path, "w") as flag:
            flag.write(f"{time.time()}\n")
        server.log.info("draining for %s s: readiness answers 503, routes still serve", seconds)
        if _wait(server, time.monotonic() + seconds):
            server.log.info("drain cut short by a second signal")
        if _owns_sockets(server):
            sockets = [listener.sock for listener in server.LISTENERS]
            queued = empty_queues(sockets, time.monotonic() + QUEUE_WAIT)
            server.log.info("listen queue emptied, %d connections left; graceful stop", queued)
        raise StopIteration  # gunicorn's own SIGTERM: a graceful stop (Arbiter.halt)

    return handle_term


def _owns_sockets(server: Any) -> bool:
    """Whether the listening sockets are this master's alone: not shared with a USR2 successor
    or predecessor, nor held by systemd (a filter would outlive this master there). The
    condition under which gunicorn itself unlinks a unix socket at its stop."""
    return server.reexec_pid == server.master_pid == 0 and not server.systemd


def _wait(server: Any, deadline: float) -> bool:
    """Run the master's housekeeping until `deadline`; True when a second SIGTERM ends the wait.
    SIGINT or SIGQUIT stop at once, as gunicorn does (workers get SIGQUIT)."""
    while (left := deadline - time.monotonic()) > 0:
        for sig in server.wait_for_signals(timeout=min(_TICK, left)):
            if sig == signal.SIGTERM:
                return True
            if sig in (signal.SIGINT, signal.SIGQUIT):
                server.log.info("quick shutdown requested during the drain")
                server.stop(False)
                raise StopIteration
            if sig == signal.SIGCHLD:
                server.handle_chld()
        server.murder_workers()
        server.manage_workers()
    return False


def empty_queues(sockets: list[socket.socket], deadline: float) -> int:
    """Refuse new connections on `sockets`, wait until the workers took the queued ones (or
    `deadline`); how many are left. Not Linux, or not TCP: nothing to do, 0."""
    filters = [_refuse_new(sock) for sock in sockets]
    while (left := sum(_queued(sock) for sock in sockets)) and time.monotonic() < deadline:
        time.sleep(0.01)
    del filters  # the kernel copied the program: the buffers may go
    return left


def _refuse_new(sock: socket.socket) -> ctypes.Array[ctypes.c_char] | None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in _DROP_SYN)
    program = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return None
    return program


def _queued(sock: socket.socket) -> int:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):  # a unix socket; TCP_INFO is Linux-only
        return 0
    return int(struct.unpack_from("I", info, _TCPI_UNACKED)[0])
