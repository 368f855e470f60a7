"""`serving batch NAME INPUT`: score a CSV, JSON Lines or Parquet file with a stored version."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from serving.store.base import StoreBase
from serving.store.model_store import DEFAULT_ALIAS


def add_parser(verbs: Any) -> None:
    batch = verbs.add_parser("batch", help="score a CSV, JSON Lines or Parquet file")
    batch.add_argument("name")
    batch.add_argument("input", help="CSV, JSON Lines or Parquet file, or - for stdin")
    batch.add_argument("-o", "--output", default="-", help="file, or - for stdout (default)")
    pick = batch.add_mutually_exclusive_group()
    pick.add_argument("--version", type=int, help="a pinned version")
    pick.add_argument("--alias", help=f"the alias to score with (default: {DEFAULT_ALIAS})")
    batch.add_argument("--proba", action="store_true", help="add proba_<class> columns")
    batch.add_argument("--scores", action="store_true", help="add score (or score_<class>) columns")
    batch.add_argument("--chunk-size", type=int, help="rows per chunk (default: ~2M values)")
    batch.add_argument("--id-column", help="input column copied to the output (default: row)")
    batch.add_argument(
        "--max-reject-rate", type=float, default=0.01, help="exit 3 above it (default: 0.01)"
    )
    batch.add_argument("--format", choices=("csv", "jsonl", "parquet"), help="output format")
    batch.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    batch.add_argument("--rejects", help="rejects file (default: OUTPUT.rejects.jsonl)")
    batch.add_argument("--log-every", type=float, default=5.0, help="progress lines off a TTY")
    batch.set_defaults(run=run)


def run(store: StoreBase, args: argparse.Namespace) -> int:
    # numpy, pandas, Arrow: imported only for this verb
    from serving.batch.options import BatchOptions
    from serving.batch.runner import run_batch

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(BatchOptions)}
    return run_batch(store, BatchOptions(**fields))
