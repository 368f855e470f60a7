"""`serving store copy SRC DST`: copy a whole store between a directory and a bucket."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from serving.settings import Settings
from serving.store.base import StoreBase
from serving.store.copy import copy_store
from serving.store.open import store_from_settings


def add_parser(verbs: Any) -> None:
    store = verbs.add_parser("store", help="the store as a whole")
    actions = store.add_subparsers(dest="action", required=True)
    copy = actions.add_parser(
        "copy", help="copy every model, version, deployment and history (sha256 verified)"
    )
    copy.add_argument("source", help="a directory or s3://BUCKET/PREFIX")
    copy.add_argument("target", help="a directory or s3://BUCKET/PREFIX")
    copy.set_defaults(run=run)


def run(_: StoreBase, args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    source = store_from_settings(dataclasses.replace(settings, model_store=args.source))
    target = store_from_settings(dataclasses.replace(settings, model_store=args.target))
    summary = copy_store(source, target, print)
    print(
        f"{summary.models} models: {summary.copied} versions copied, "
        f"{summary.skipped} already there"
    )
    return 0
