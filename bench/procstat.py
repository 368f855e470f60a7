"""CPU time and memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
# Indices into the fields after "pid (comm) ": 0 is the state, field 3 of proc(5).
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (gunicorn's workers, for its master)."""
    return sorted(child for child, parent in _parents().items() if parent == pid)


def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of `pid` (a peer's CLI -> uvicorn -> workers)."""
    parents, out, frontier = _parents(), [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        out += below
        frontier = below
    return sorted(out)


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = int(_fields(int(entry))[_PPID])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    return out


def tree_cpu_seconds(master: int) -> float:
    """user+system CPU of `master` and its live descendants, plus the children each reaped.

    For gunicorn that is the master, its workers and the workers it already reaped.
    """
    ticks = 0
    for pid in [master, *descendants(master)]:
        try:
            fields = _fields(pid)
        except OSError:  # exited between the listing and now: counted once reaped
            if pid == master:
                raise
            continue
        ticks += sum(int(fields[i]) for i in (_UTIME, _STIME, _CUTIME, _CSTIME))
    return ticks / _TICKS


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICKS


def pss_mib(pid: int) -> float | None:
    """Proportional set size: shared pages divided among the processes that map them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
