"""`serving export NAME VERSION --edge DIR`: a bundle that scores without a server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from serving.cli.tables import print_parity_failure
from serving.store.base import StoreBase


def add_parser(verbs: Any) -> None:
    export = verbs.add_parser("export", help="write a version as a self-contained edge bundle")
    export.add_argument("name")
    export.add_argument("version", type=int)
    export.add_argument(
        "--edge", required=True, metavar="DIR", help="the bundle's directory (absent or empty)"
    )
    page = export.add_mutually_exclusive_group()
    page.add_argument(
        "--web-runtime",
        metavar="DIR",
        help="onnxruntime-web's files for index.html (default: where `make edge-web` puts them)",
    )
    page.add_argument("--no-web", action="store_true", help="no index.html: Python only")
    export.set_defaults(run=run)


def run(store: StoreBase, args: argparse.Namespace) -> int:
    from serving.compile.onnx import ParityError  # skl2onnx, onnxruntime: only for this verb
    from serving.edge.bundle import DEFAULT_WEB_DIR, export

    web_dir = None if args.no_web else Path(args.web_runtime or DEFAULT_WEB_DIR)
    try:
        manifest = export(store, args.name, args.version, Path(args.edge), web_dir)
    except ParityError as exc:
        print_parity_failure(exc, "no bundle written")
        return 1
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(
        f"{args.name} v{args.version}: edge bundle of {len(manifest['files'])} files, "
        f"{size / 1e6:.1f} MB ({manifest['source']['compiled_by']})",
        file=sys.stderr,
    )
    print(args.edge)
    return 0
