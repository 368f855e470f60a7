"""What one batch run is asked to do: the options of `serving batch`, without argparse."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchOptions:
    """One run's options; the names are the command line's (`--chunk-size` is `chunk_size`)."""

    name: str
    input: str  # a path, or "-" for stdin
    output: str = "-"  # a path, or "-" for stdout
    version: int | None = None  # a pinned version, else the alias's
    alias: str | None = None
    proba: bool = False
    scores: bool = False
    chunk_size: int | None = None  # None: about two million values per chunk
    id_column: str | None = None
    max_reject_rate: float = 0.01
    format: str | None = None  # None: from the output's name, else the input's format
    workers: int = 1
    rejects: str | None = None  # None: OUTPUT.rejects.jsonl
    log_every: float = 5.0
