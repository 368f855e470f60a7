"""The command line: `python -m serving models ...` and `python -m serving demo`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from serving import artifacts
from serving.errors import ConfigError, ServingError
from serving.store import DEFAULT_ALIAS, ModelStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serving", description=__doc__)
    parser.add_argument(
        "--store",
        type=Path,
        default=Path(os.environ.get("SERVING_MODEL_STORE", "model_store")),
        help="store root (default: $SERVING_MODEL_STORE or ./model_store)",
    )
    parser.add_argument("--actor", help="who to record in history.jsonl (default: user@host)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    models = verbs.add_parser("models", help="manage the model store").add_subparsers(
        dest="action", required=True
    )
    reg = models.add_parser("register", help="add an artifact as the next version")
    reg.add_argument("name")
    reg.add_argument("artifact", type=Path)
    reg.add_argument("--reference-data", type=Path, help="CSV with a header: feature columns")
    reg.add_argument("--activate", action="store_true", help=f"point {DEFAULT_ALIAS} at it")
    reg.add_argument("--categorical", default="", help="comma-separated string features")
    models.add_parser("list", help="models, versions and aliases")
    show = models.add_parser("show", help="one model: versions, aliases and whether each loads")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    promote = models.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", default=DEFAULT_ALIAS)
    rollback = models.add_parser("rollback", help="point an alias back to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default=DEFAULT_ALIAS)

    demo = verbs.add_parser("demo", help="train the demo models into an empty store")
    demo.add_argument("--force", action="store_true", help="register even if the store has models")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = ModelStore(args.store)
    try:
        if args.verb == "demo":
            from serving.demo import create_demo_models

            return create_demo_models(store, force=args.force, actor=args.actor)
        return _models(store, args)
    except (ServingError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


def _models(store: ModelStore, args: argparse.Namespace) -> int:
    if args.action == "register":
        categorical = {c.strip() for c in args.categorical.split(",") if c.strip()}
        version = store.register(
            args.name,
            args.artifact,
            args.reference_data,
            args.activate,
            categorical,
            actor=args.actor,
        )
        print(version)
    elif args.action == "list":
        for name in store.list_models():
            aliases = store.read_deployment(name)["aliases"]
            shown = " ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "(no aliases)"
            print(f"{name}\tversions={','.join(map(str, store.versions(name)))}\t{shown}")
    elif args.action == "show":
        report = show_model(store, args.name)
        print(json.dumps(report, indent=2) if args.json else _format_show(report))
    elif args.action == "promote":
        before = store.promote(args.name, args.version, args.alias, actor=args.actor)
        print(
            f"{args.name}: {args.alias} {before if before is not None else '-'} -> {args.version}"
        )
    elif args.action == "rollback":
        target = store.rollback(args.name, args.alias, actor=args.actor)
        print(f"{args.name}: {args.alias} rolled back to {target}")
    return 0


def show_model(store: ModelStore, name: str) -> dict[str, Any]:
    """Versions, aliases, and for each alias whether its version can load here, and why not."""
    allow = os.environ.get("SERVING_ALLOW_VERSION_MISMATCH", "").lower() in ("1", "true", "yes")
    versions = store.versions(name)
    aliases = store.read_deployment(name)["aliases"]
    checks: dict[str, str] = {}
    for alias, version in sorted(aliases.items()):
        try:
            metadata = store.read_metadata(name, version)
            artifacts.load_version(store.version_dir(name, version), metadata, allow)
            checks[alias] = "ok"
        except artifacts.ModelLoadError as exc:
            checks[alias] = f"cannot serve: {exc.reason}"
        except ServingError as exc:
            checks[alias] = f"cannot serve: {exc.message}"
    described = []
    for version in versions:
        try:
            meta = store.read_metadata(name, version)
            described.append({k: meta.get(k) for k in ("version", "created_at", "task", "sha256")})
        except ServingError as exc:
            described.append({"version": version, "error": exc.message})
    history = store.history(name)[-10:]
    return {
        "name": name,
        "aliases": aliases,
        "alias_status": checks,
        "versions": described,
        "history": history,
    }


def _format_show(report: dict[str, Any]) -> str:
    lines = [f"model {report['name']}"]
    for alias, version in report["aliases"].items():
        lines.append(f"  alias {alias} -> version {version}: {report['alias_status'][alias]}")
    if not report["aliases"]:
        lines.append("  no aliases: not deployed (promote a version)")
    for v in report["versions"]:
        sha = (v.get("sha256") or "")[:12]
        lines.append(
            f"  version {v['version']}  {v.get('task', '')}  {v.get('created_at', '')}  {sha}"
            + (f"  ERROR {v['error']}" if "error" in v else "")
        )
    for event in report["history"]:
        lines.append(
            f"  history {event.get('at')} {event.get('action')} "
            f"{event.get('alias', '')} {event.get('previous', '')}->{event.get('version')} "
            f"by {event.get('actor')}"
        )
    return "\n".join(lines)
