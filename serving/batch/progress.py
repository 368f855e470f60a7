"""The progress of `serving batch` on stderr: a redrawn bar on a terminal, lines elsewhere."""

from __future__ import annotations

import io
import time
from typing import Any, TextIO


class Progress:
    """A redrawn bar on a terminal; plain lines every `every` seconds otherwise (logs, CI)."""

    def __init__(
        self,
        label: str,
        stream: TextIO,
        total_rows: int | None,
        total_bytes: int | None,
        every: float,
        clock: Any = time.monotonic,
    ) -> None:
        self._label, self._stream, self._clock = label, stream, clock
        self._rows_total, self._bytes_total = total_rows, total_bytes
        self._tty = _isatty(stream)
        self._every = 0.1 if self._tty else every
        self.started = self._last = clock()
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def update(self, rows: int, position: int | None) -> None:
        now = self._clock()
        if now - self._last < self._every:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = rows / elapsed
        text = f"{self._label}: {rows:,} rows, {rate:,.0f} rows/s"
        fraction = self._fraction(rows, position)
        if fraction is not None and fraction > 0:
            eta = elapsed * (1 - fraction) / fraction
            text += f", {fraction:.0%}, ETA {_clock_time(eta)}"
        if self._tty:
            self._stream.write(f"\r{_bar(fraction)} {text}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """Clear the bar (before the summary, or an error, is printed)."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    def _fraction(self, rows: int, position: int | None) -> float | None:
        if self._rows_total:
            return min(rows / self._rows_total, 1.0)
        if self._bytes_total and position is not None:
            return min(position / self._bytes_total, 1.0)
        return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _bar(fraction: float | None, width: int = 20) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _clock_time(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
