"""`serving models register|list|show|promote|rollback`: the versions and aliases of a model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from serving.cli import safe_register
from serving.cli.rollouts import format_route
from serving.errors import ServingError
from serving.store.base import StoreBase
from serving.store.model_store import DEFAULT_ALIAS


def add_parser(verbs: Any) -> Any:
    """The `models` verb and its actions; returns the actions, for the rollout ones."""
    actions = verbs.add_parser("models", help="manage the model store").add_subparsers(
        dest="action", required=True
    )
    reg = actions.add_parser("register", help="add an artifact as the next version")
    reg.add_argument("name")
    reg.add_argument("artifact", type=Path)
    reg.add_argument("--reference-data", type=Path, help="CSV with a header: feature columns")
    reg.add_argument("--activate", action="store_true", help=f"point {DEFAULT_ALIAS} at it")
    reg.add_argument("--categorical", default="", help="comma-separated string features")
    reg.add_argument(
        "--text",
        default="",
        help="comma-separated text features (found without it where a vectorizer reads them); "
        "for a model without feature names, the name of its one text feature",
    )
    reg.add_argument(
        "--no-created-by",
        dest="created_by",
        action="store_false",
        default=None,
        help="do not record who registered it (default: $SERVING_RECORD_CREATED_BY, true)",
    )
    safe_register.add_arguments(reg)
    safe_register.add_nullable_arguments(reg)
    listing = actions.add_parser("list", help="models, versions and aliases")
    show = actions.add_parser("show", help="one model: versions, aliases and whether each loads")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", default=DEFAULT_ALIAS)
    rollback = actions.add_parser(
        "rollback", help="point an alias back to its previous version (a split: before it)"
    )
    rollback.add_argument("name")
    rollback.add_argument("--alias", default=DEFAULT_ALIAS)
    for parser in (reg, listing, show, promote, rollback):
        parser.set_defaults(run=run)
    return actions


def run(store: StoreBase, args: argparse.Namespace) -> int:
    if args.action == "register":
        categorical = {c.strip() for c in args.categorical.split(",") if c.strip()}
        version = store.register(
            args.name,
            args.artifact,
            args.reference_data,
            args.activate,
            categorical,
            actor=args.actor,
            policy=safe_register.policy(args),
            created_by=args.created_by,
            nullable=safe_register.nullable(args),
            text={c.strip() for c in args.text.split(",") if c.strip()},
        )
        print(version)
    elif args.action == "list":
        _list(store)
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


def _list(store: StoreBase) -> None:
    for name in store.list_models():
        aliases = store.read_deployment(name)["aliases"]
        shown = " ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "(no aliases)"
        print(f"{name}\tversions={','.join(map(str, store.versions(name)))}\t{shown}")


def show_model(store: StoreBase, name: str) -> dict[str, Any]:
    """Versions, aliases, and for each alias whether its version can load here, and why not."""
    versions = store.versions(name)  # first: ModelNotFound for a model the store lacks
    deployment = store.read_deployment(name)
    return {
        "name": name,
        "aliases": deployment["aliases"],
        "alias_status": _alias_status(store, name, deployment["aliases"]),
        "routes": deployment.get("routes") or {},
        "shadows": deployment.get("shadows") or {},
        "versions": _describe_versions(store, name, versions),
        "history": store.history(name)[-10:],
    }


def _alias_status(store: StoreBase, name: str, aliases: dict[str, int]) -> dict[str, str]:
    """ "ok" or "cannot serve: why" per alias, from loading its version as a worker would."""
    from serving.runtime import artifacts  # scikit-learn: only to check that the versions load

    allow = os.environ.get("SERVING_ALLOW_VERSION_MISMATCH", "").lower() in ("1", "true", "yes")
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
    return checks


def _describe_versions(store: StoreBase, name: str, versions: list[int]) -> list[dict[str, Any]]:
    described = []
    for version in versions:
        try:
            meta = store.read_metadata(name, version)
            keys = ("version", "created_at", "task", "sha256", "format", "trusted_types")
            described.append({k: meta.get(k) for k in keys})
        except ServingError as exc:
            described.append({"version": version, "error": exc.message})
    return described


def _format_show(report: dict[str, Any]) -> str:
    lines = [f"model {report['name']}"]
    for alias, version in report["aliases"].items():
        lines.append(f"  alias {alias} -> version {version}: {report['alias_status'][alias]}")
        if alias in report.get("routes", {}):
            lines.append(f"    route {format_route(report['routes'][alias])}")
        if alias in report.get("shadows", {}):
            lines.append(f"    shadow version {report['shadows'][alias]} (sees a copy of traffic)")
    if not report["aliases"]:
        lines.append("  no aliases: not deployed (promote a version)")
    for v in report["versions"]:
        sha = (v.get("sha256") or "")[:12]
        lines.append(
            f"  version {v['version']}  {v.get('task', '')}  {v.get('format') or 'joblib'}"
            f"  {v.get('created_at', '')}  {sha}"
            + (f"  ERROR {v['error']}" if "error" in v else "")
        )
    for event in report["history"]:
        lines.append(f"  history {_format_event(event)}")
    return "\n".join(lines)


def _format_event(event: dict[str, Any]) -> str:
    action, alias = event.get("action"), event.get("alias", "")
    if action == "shadow":
        change = f"{event.get('previous') or 'off'} -> {event.get('shadow') or 'off'}"
    elif action == "route" and isinstance(event.get("route"), dict):
        change = format_route(event["route"])
    elif action == "register":
        change = f"version {event.get('version')}"
    else:
        previous = event.get("previous")
        change = f"{'-' if previous is None else previous} -> {event.get('version')}"
    parts = (event.get("at"), action, alias, change, f"by {event.get('actor')}")
    return " ".join(str(part) for part in parts if part)
