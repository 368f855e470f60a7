"""`serving models route|shadow|alias` and `serving ab`: split, mirror and compare traffic."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from serving.cli.tables import align
from serving.errors import StoreError
from serving.store.base import StoreBase
from serving.store.deployment import parse_weights
from serving.store.model_store import DEFAULT_ALIAS


def add_model_actions(actions: Any) -> None:
    """`models route|shadow|alias`: actions of the `models` verb that change what serves."""
    route = actions.add_parser("route", help="split an alias between versions by weight")
    route.add_argument("name")
    route.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT", help="e.g. 3=90 4=10")
    route.add_argument("--alias", default=DEFAULT_ALIAS)
    route.add_argument("--sticky", action="store_true", help="same routing key, same variant")
    shadow = actions.add_parser("shadow", help="mirror an alias's traffic to a version")
    shadow.add_argument("name")
    shadow.add_argument("version", metavar="VERSION|off")
    shadow.add_argument("--alias", default=DEFAULT_ALIAS)
    alias = actions.add_parser("alias", help="point ALIAS at VERSION (promote --alias)")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    for parser in (route, shadow, alias):
        parser.set_defaults(run=run)


def add_parser(verbs: Any) -> None:
    """`ab`: the A/B report of an alias."""
    ab = verbs.add_parser("ab", help="A/B report of an alias: traffic, quality, verdict")
    ab.add_argument("name")
    ab.add_argument("--alias", default=DEFAULT_ALIAS)
    ab.add_argument("--window", default="24h", help="how far back: 30m, 1h, 24h, 7d (default 24h)")
    ab.add_argument("--json", action="store_true", help="print JSON")
    ab.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SERVING_DATA_DIR") or "data"),
        help="the prediction log's directory (default: $SERVING_DATA_DIR or ./data); "
        "$SERVING_DATABASE_URL, when set, is read instead",
    )
    ab.set_defaults(run=run_ab)


def run(store: StoreBase, args: argparse.Namespace) -> int:
    """`models route|shadow|alias`."""
    if args.action == "route":
        doc = store.route(
            args.name, parse_weights(args.weights), args.alias, args.sticky, actor=args.actor
        )
        print(f"{args.name}: {args.alias} routed {format_route(doc)}")
    elif args.action == "shadow":
        version = _shadow_version(args.version)
        before = store.shadow(args.name, version, args.alias, actor=args.actor)
        print(f"{args.name}: {args.alias} shadow {before or 'off'} -> {version or 'off'}")
    elif args.action == "alias":
        before = store.promote(args.name, args.version, args.alias, actor=args.actor)
        print(
            f"{args.name}: {args.alias} {before if before is not None else '-'} -> {args.version}"
        )
    return 0


def _shadow_version(text: str) -> int | None:
    if text.lower() == "off":
        return None
    try:
        return int(text)
    except ValueError:
        raise StoreError(f"shadow takes a version number or 'off', not {text!r}") from None


def format_route(doc: dict[str, Any]) -> str:
    """`3=90% 4=10%, sticky (experiment iris/production/7)`: weights as shares of traffic."""
    total = sum(v["weight"] for v in doc["variants"]) or 1.0
    shares = " ".join(f"{v['version']}={100 * v['weight'] / total:g}%" for v in doc["variants"])
    how = "sticky by routing key" if doc.get("sticky") else "random"
    return f"{shares}, {how} (experiment {doc.get('experiment', '-')})"


# -- ab ---------------------------------------------------------------------------------------


def run_ab(store: StoreBase, args: argparse.Namespace) -> int:
    """`python -m serving ab NAME [--alias A] [--window 24h] [--json] [--data-dir DIR]`."""
    from serving.rollouts.abtest import build_report  # scipy: only for this verb
    from serving.telemetry.datastore import DataStore, database_url, parse_window

    seconds = parse_window(args.window)
    datastore = DataStore(args.data_dir, database_url())
    try:
        body = build_report(
            datastore, store, args.name, args.alias, seconds, time.time(), args.window
        )
    finally:
        datastore.close()
    print(json.dumps(body, indent=2) if args.json else format_ab_report(body))
    return 0


def format_ab_report(body: dict[str, Any]) -> str:
    """The A/B report as a readable table."""
    lines = [
        f"{body['model']} / {body['alias']}, last {body['window']} "
        f"({body['since']} .. {body['until']}), {body['task']}, primary {body['primary'] or '-'}"
    ]
    lines += _variant_table(body)
    lines.append("predictions:")
    for v in body["variants"]:
        lines.append(f"  {v['variant']}: {_distribution(v['predictions'])}")
    lines += [_shadow_line(s) for s in body["shadows"]]
    lines.append(f"verdict: {body['verdict']['text']}")
    return "\n".join(lines)


def _variant_table(body: dict[str, Any]) -> list[str]:
    metric = "MAE" if body["task"] == "regressor" else "accuracy"
    head = ("variant", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "labelled")
    table = [(*head, f"{metric} [95% CI]", "vs primary", "p")]
    for v in body["variants"]:
        lat, fb, vs = v["latency_ms"], v["feedback"], v["vs_primary"]
        table.append(
            (
                v["variant"] + ("*" if v["primary"] else ""),
                str(v["requests"]),
                f"{100 * (v['error_rate'] or 0):.1f}%",
                *(_cell(lat[k]) for k in ("p50", "p95", "p99")),
                str(fb["labelled"]) if fb else "0",
                _metric_cell(fb),
                f"{vs['difference']:+.3f}" if vs else "",
                f"{vs['p_value']:.2g}" if vs else "",
            )
        )
    return align(table)


def _shadow_line(s: dict[str, Any]) -> str:
    agreement = "-" if s["agreement"] is None else f"{100 * s['agreement']:.1f}%"
    extra = (
        f", mean |difference| {_cell(s['mean_abs_difference'])}"
        if "mean_abs_difference" in s
        else ""
    )
    return (
        f"shadow v{s['version']}: {s['requests']} requests, {s['rows']} rows, "
        f"agreement with the primary {agreement}{extra}"
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _metric_cell(feedback: dict[str, Any] | None) -> str:
    if not feedback or feedback["value"] is None:
        return "-"
    ci = feedback["ci95"]
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{feedback['value']:.3f}{interval}"


def _distribution(predictions: dict[str, Any]) -> str:
    if "classes" in predictions:
        shown = [f"{c['label']} {c['count']}" for c in predictions["classes"][:10]]
        more = len(predictions["classes"]) - 10
        return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "") or "-"
    if not predictions.get("count"):
        return "-"
    return ", ".join(f"{k} {_cell(predictions[k])}" for k in ("mean", "std", "min", "p50", "max"))
