"""The command line: `python -m serving models ...`, `... demo` and `... batch`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from serving.cli import batch, demo, export, models, monitor, optimize, rollouts, stores
from serving.errors import ConfigError, ServingError
from serving.settings import Settings
from serving.store.open import store_from_settings


def build_parser() -> argparse.ArgumentParser:
    # The verb groups add themselves in this order, which is the order `--help` lists them in.
    parser = argparse.ArgumentParser(prog="serving", description=__doc__)
    parser.add_argument(
        "--store",
        default=os.environ.get("SERVING_MODEL_STORE", "model_store"),
        help="store root or s3://BUCKET/PREFIX (default: $SERVING_MODEL_STORE or ./model_store)",
    )
    parser.add_argument("--actor", help="who to record in history.jsonl (default: user@host)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    rollouts.add_model_actions(models.add_parser(verbs))
    demo.add_parser(verbs)
    batch.add_parser(verbs)
    rollouts.add_parser(verbs)
    optimize.add_parser(verbs)
    export.add_parser(verbs)
    monitor.add_parser(verbs)  # monitor and traffic
    stores.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = store_from_settings(
            dataclasses.replace(Settings.from_env(), model_store=args.store)
        )
        return int(args.run(store, args))  # each verb's parser names its `run`
    except (ServingError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
