"""Why the prediction log lost records: the reason of a failed write (serving.telemetry.losses)."""

from __future__ import annotations

import errno
import sqlite3

from serving.telemetry.losses import failure_reason


def test_a_full_disk_is_told_from_other_failures() -> None:
    assert failure_reason(OSError(errno.ENOSPC, "No space left on device"), True) == "disk_full"
    assert failure_reason(sqlite3.OperationalError("database or disk is full"), True) == "disk_full"
    assert failure_reason(OSError(errno.EIO, "I/O error"), True) == "db_unavailable"
    assert failure_reason(ValueError("bad"), False) == "db_error"
