"""The command line: `python -m serving models ...`, `... demo` and `... batch`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from serving.errors import ConfigError, ServingError, StoreError
from serving.store.deployment import parse_weights
from serving.store.model_store import DEFAULT_ALIAS, ModelStore


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
    rollback = models.add_parser(
        "rollback", help="point an alias back to its previous version (a split: before it)"
    )
    rollback.add_argument("name")
    rollback.add_argument("--alias", default=DEFAULT_ALIAS)
    route = models.add_parser("route", help="split an alias between versions by weight")
    route.add_argument("name")
    route.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT", help="e.g. 3=90 4=10")
    route.add_argument("--alias", default=DEFAULT_ALIAS)
    route.add_argument("--sticky", action="store_true", help="same routing key, same variant")
    shadow = models.add_parser("shadow", help="mirror an alias's traffic to a version")
    shadow.add_argument("name")
    shadow.add_argument("version", metavar="VERSION|off")
    shadow.add_argument("--alias", default=DEFAULT_ALIAS)
    alias = models.add_parser("alias", help="point ALIAS at VERSION (promote --alias)")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)

    demo = verbs.add_parser("demo", help="train the demo models into an empty store")
    demo.add_argument("--force", action="store_true", help="register even if the store has models")
    batch = verbs.add_parser("batch", help="score a CSV, JSON Lines or Parquet file")
    batch.add_argument("name")
    batch.add_argument("input", help="CSV, JSON Lines or Parquet file, or - for stdin")
    batch.add_argument("-o", "--output", default="-", help="file, or - for stdout (default)")
    pick = batch.add_mutually_exclusive_group()
    pick.add_argument("--version", type=int, help="a pinned version")
    pick.add_argument("--alias", help=f"the alias to score with (default: {DEFAULT_ALIAS})")
    batch.add_argument("--proba", action="store_true", help="add proba_<class> columns")
    batch.add_argument("--chunk-size", type=int, help="rows per chunk (default: ~2M values)")
    batch.add_argument("--id-column", help="input column copied to the output (default: row)")
    batch.add_argument(
        "--max-reject-rate", type=float, default=0.01, help="exit 3 above it (default: 0.01)"
    )
    batch.add_argument("--format", choices=("csv", "jsonl", "parquet"), help="output format")
    batch.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    batch.add_argument("--rejects", help="rejects file (default: OUTPUT.rejects.jsonl)")
    batch.add_argument("--log-every", type=float, default=5.0, help="progress lines off a TTY")
    ab = verbs.add_parser("ab", help="A/B report of an alias: traffic, quality, verdict")
    ab.add_argument("name")
    ab.add_argument("--alias", default=DEFAULT_ALIAS)
    ab.add_argument("--window", default="24h", help="how far back: 30m, 1h, 24h, 7d (default 24h)")
    ab.add_argument("--json", action="store_true", help="print JSON")
    ab.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SERVING_DATA_DIR") or "data"),
        help="the prediction log's directory (default: $SERVING_DATA_DIR or ./data)",
    )
    opt = verbs.add_parser("optimize", help="compile a version (ONNX) into a new version")
    opt.add_argument("name")
    opt.add_argument("version", type=int)
    opt.add_argument("--onnx", action="store_true", help="convert with skl2onnx, serve with ORT")
    opt.add_argument(
        "--quantize", action="store_true", help="ONNX with int8 MatMul weights (MLP, PCA...)"
    )
    opt.add_argument(
        "--min-label-agreement",
        type=float,
        default=0.99,
        help="--quantize gate: share of labels equal to the original's (default 0.99)",
    )
    opt.add_argument(
        "--max-proba-diff",
        type=float,
        default=0.1,
        help="--quantize gate: largest probability difference (default 0.1)",
    )
    opt.add_argument(
        "--max-value-diff",
        type=float,
        default=0.05,
        help="--quantize gate, regressors: largest difference in output std units (default 0.05)",
    )
    mon = verbs.add_parser("monitor", help="drift of a version's live inputs and outputs")
    mon.add_argument("name")
    mon.add_argument("--version", type=int, help="default: the version production serves")
    mon.add_argument("--window", default="1h", help="how far back: 30m, 1h, 24h (default 1h)")
    mon.add_argument("--json", action="store_true", help="print JSON")
    mon.add_argument("--html", type=Path, help="also write a self-contained HTML report here")
    mon.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SERVING_DATA_DIR") or "data"),
        help="the embedded store's directory (default: $SERVING_DATA_DIR or ./data)",
    )
    traffic = verbs.add_parser(
        "traffic", help="requests, errors and latency per version over a window (all workers)"
    )
    traffic.add_argument("name", nargs="?", help="one model (default: every model)")
    traffic.add_argument("--window", default="15m", help="how far back: 5m, 1h, 24h (15m)")
    traffic.add_argument("--json", action="store_true", help="print the dashboard's JSON")
    traffic.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SERVING_DATA_DIR") or "data"),
        help="the embedded store's directory (default: $SERVING_DATA_DIR or ./data)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = ModelStore(args.store)
    try:
        if args.verb == "demo":
            from serving.cli.demo import create_demo_models

            return create_demo_models(store, force=args.force, actor=args.actor)
        if args.verb == "batch":
            from serving.batch.runner import run_batch  # numpy, pandas, Arrow: only for this verb

            return run_batch(store, args)
        if args.verb == "ab":
            from serving.rollouts.abtest import run_cli  # scipy: only for this verb

            return run_cli(store, args)
        if args.verb == "optimize":
            from serving.compile.onnx import run_cli as run_optimize  # skl2onnx, onnxruntime

            return run_optimize(store, args)
        if args.verb == "monitor":
            from serving.monitoring.monitor import run_cli as run_monitor

            return run_monitor(store, args)
        if args.verb == "traffic":
            from serving.monitoring.dashboard import run_cli as run_traffic

            return run_traffic(store, args)
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
    elif args.action in ("promote", "alias"):
        before = store.promote(args.name, args.version, args.alias, actor=args.actor)
        print(
            f"{args.name}: {args.alias} {before if before is not None else '-'} -> {args.version}"
        )
    elif args.action == "rollback":
        target = store.rollback(args.name, args.alias, actor=args.actor)
        print(f"{args.name}: {args.alias} rolled back to {target}")
    elif args.action == "route":
        doc = store.route(
            args.name, parse_weights(args.weights), args.alias, args.sticky, actor=args.actor
        )
        print(f"{args.name}: {args.alias} routed {_format_route(doc)}")
    elif args.action == "shadow":
        version = _shadow_version(args.version)
        before = store.shadow(args.name, version, args.alias, actor=args.actor)
        print(f"{args.name}: {args.alias} shadow {before or 'off'} -> {version or 'off'}")
    return 0


def _shadow_version(text: str) -> int | None:
    if text.lower() == "off":
        return None
    try:
        return int(text)
    except ValueError:
        raise StoreError(f"shadow takes a version number or 'off', not {text!r}") from None


def _format_route(doc: dict[str, Any]) -> str:
    """`3=90% 4=10%, sticky (experiment iris/production/7)`: weights as shares of traffic."""
    total = sum(v["weight"] for v in doc["variants"]) or 1.0
    shares = " ".join(f"{v['version']}={100 * v['weight'] / total:g}%" for v in doc["variants"])
    how = "sticky by routing key" if doc.get("sticky") else "random"
    return f"{shares}, {how} (experiment {doc.get('experiment', '-')})"


def show_model(store: ModelStore, name: str) -> dict[str, Any]:
    """Versions, aliases, and for each alias whether its version can load here, and why not."""
    from serving.runtime import artifacts  # scikit-learn: only to check that the versions load

    allow = os.environ.get("SERVING_ALLOW_VERSION_MISMATCH", "").lower() in ("1", "true", "yes")
    versions = store.versions(name)
    deployment = store.read_deployment(name)
    aliases = deployment["aliases"]
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
        "routes": deployment.get("routes") or {},
        "shadows": deployment.get("shadows") or {},
        "versions": described,
        "history": history,
    }


def _format_show(report: dict[str, Any]) -> str:
    lines = [f"model {report['name']}"]
    for alias, version in report["aliases"].items():
        lines.append(f"  alias {alias} -> version {version}: {report['alias_status'][alias]}")
        if alias in report.get("routes", {}):
            lines.append(f"    route {_format_route(report['routes'][alias])}")
        if alias in report.get("shadows", {}):
            lines.append(f"    shadow version {report['shadows'][alias]} (sees a copy of traffic)")
    if not report["aliases"]:
        lines.append("  no aliases: not deployed (promote a version)")
    for v in report["versions"]:
        sha = (v.get("sha256") or "")[:12]
        lines.append(
            f"  version {v['version']}  {v.get('task', '')}  {v.get('created_at', '')}  {sha}"
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
        change = _format_route(event["route"])
    elif action == "register":
        change = f"version {event.get('version')}"
    else:
        previous = event.get("previous")
        change = f"{'-' if previous is None else previous} -> {event.get('version')}"
    parts = (event.get("at"), action, alias, change, f"by {event.get('actor')}")
    return " ".join(str(part) for part in parts if part)
