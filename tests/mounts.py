"""Real small and read-only filesystems for fault tests: a tmpfs of a given size, a read-only
bind mount. Mounting needs root (CI containers run as root); elsewhere the test skips."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root): {done.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "4m") mounted at `path` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(source: Path, path: Path) -> Iterator[Path]:
    """`source` seen read-only at `path` (a bind mount remounted ro): even root cannot write."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC); return it (unlink it to free)."""
    filler = directory / "filler"
    for chunk in (65536, 512):  # big blocks, then the last partial one
        with contextlib.suppress(OSError), filler.open("ab") as out:
            while True:
                out.write(b"\0" * chunk)
                out.flush()
                os.fsync(out.fileno())
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"\0" * 8192)
    assert full.value.errno == errno.ENOSPC
    return filler
