"""Plain-text tables and reports the command line prints."""

from __future__ import annotations

import json
import sys
from typing import Any


def align(table: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as lines of left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]


def print_parity_failure(failure: Any, consequence: str = "") -> None:
    """A compilation refused by its parity gate (`ParityError`): the error line, the hint, and
    the parity report as JSON, on stderr; `consequence` ends the error line."""
    ending = f"; {consequence}" if consequence else ""
    print(f"error: {failure.message}{ending}", file=sys.stderr)
    if failure.hint:
        print(f"hint: {failure.hint}", file=sys.stderr)
    print(json.dumps(failure.report, indent=2, default=str), file=sys.stderr)
