"""`serving monitor` (drift of a version) and `serving traffic` (requests per version)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from serving.cli.tables import align
from serving.store.base import StoreBase


def add_parser(verbs: Any) -> None:
    """The `monitor` and `traffic` verbs."""
    mon = verbs.add_parser("monitor", help="drift of a version's live inputs and outputs")
    mon.add_argument("name")
    mon.add_argument("--version", type=int, help="default: the version production serves")
    mon.add_argument("--window", default="1h", help="how far back: 30m, 1h, 24h (default 1h)")
    mon.add_argument("--json", action="store_true", help="print JSON")
    mon.add_argument("--html", type=Path, help="also write a self-contained HTML report here")
    _data_dir(mon)
    mon.set_defaults(run=run_monitor)
    traffic = verbs.add_parser(
        "traffic", help="requests, errors and latency per version over a window (all workers)"
    )
    traffic.add_argument("name", nargs="?", help="one model (default: every model)")
    traffic.add_argument("--window", default="15m", help="how far back: 5m, 1h, 24h (15m)")
    traffic.add_argument("--json", action="store_true", help="print the dashboard's JSON")
    _data_dir(traffic)
    traffic.set_defaults(run=run_traffic)


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("SERVING_DATA_DIR") or "data"),
        help="the embedded store's directory (default: $SERVING_DATA_DIR or ./data); "
        "$SERVING_DATABASE_URL, when set, is read instead",
    )


# -- monitor ----------------------------------------------------------------------------------


def run_monitor(store: StoreBase, args: argparse.Namespace) -> int:
    """`python -m serving monitor NAME [--version V] [--window 1h] [--json] [--data-dir DIR]`."""
    from serving.monitoring.report import build_report
    from serving.settings import Settings
    from serving.telemetry.datastore import DataStore, database_url, parse_window

    settings = Settings.from_env()  # the drift thresholds
    seconds = parse_window(args.window)
    datastore = DataStore(args.data_dir, database_url())
    try:
        body = build_report(
            datastore,
            store,
            args.name,
            args.version,
            seconds,
            time.time(),
            args.window,
            settings.drift_warn,
            settings.drift_alert,
        )
    finally:
        datastore.close()
    print(json.dumps(body, indent=2) if args.json else format_drift_report(body))
    if getattr(args, "html", None):
        from serving.monitoring.html import render_html

        args.html.write_text(render_html(body), encoding="utf-8")
    return 0


def format_drift_report(body: dict[str, Any]) -> str:
    """The drift report as a readable table."""
    lines = [
        f"{body['model']} v{body['version']}, last {body['window']} "
        f"({body['since']} .. {body['until']}): {body['rows']} rows, status {body['status']}"
    ]
    if not body["reference"]:
        lines.append(body["note"])
    else:
        lines += align([_FEATURE_HEAD, *(_feature_row(f) for f in body["features"])])
        lines += _output_lines(body["output"], body["confidence"])
    if body.get("predictions"):
        lines.append(
            "predictions: " + ", ".join(f"{k}={v}" for k, v in sorted(body["predictions"].items()))
        )
    return "\n".join(lines)


_FEATURE_HEAD = ("feature", "kind", "rows", "PSI", "p", "status", "outside", "missing", "mean")


def _feature_row(f: dict[str, Any]) -> tuple[str, ...]:
    mean = f.get("mean")
    shift = f.get("mean_shift_std")
    shown = (
        "-"
        if mean is None
        else f"{mean:.4g}" + (f" ({shift:+.2f} sd)" if shift is not None else "")
    )
    return (
        f["name"],
        f["kind"],
        str(int(f["rows"])),
        _num(f["psi"]),
        "-" if f["p_value"] is None else f"{f['p_value']:.2g}",
        f["status"],
        _pct(f.get("outside_range")),
        _pct(f["missing_rate"]),
        shown,
    )


def _output_lines(out: dict[str, Any] | None, conf: dict[str, Any] | None) -> list[str]:
    lines = []
    if out:
        lines.append(f"output drift ({out['kind']}): PSI {_num(out['psi'])}, {out['status']}")
    if conf and conf["rows"]:
        lines.append(
            f"confidence: mean {_num(conf['mean'])} vs reference "
            f"{_num(conf['reference_mean'])} (shift {_num(conf['shift'])})"
        )
    return lines


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# -- traffic ----------------------------------------------------------------------------------


def run_traffic(store: StoreBase, args: argparse.Namespace) -> int:
    """`python -m serving traffic [NAME] [--window 15m] [--json] [--data-dir DIR]`."""
    from serving.monitoring.dashboard import build_dashboard
    from serving.settings import Settings
    from serving.telemetry.datastore import DataStore, database_url, parse_window

    settings = Settings.from_env()  # the drift thresholds
    datastore = DataStore(args.data_dir, database_url())
    try:
        body = build_dashboard(
            datastore,
            store,
            parse_window(args.window),
            time.time(),
            args.window,
            settings.drift_warn,
            settings.drift_alert,
            args.name,
        )
    finally:
        datastore.close()
    print(json.dumps(body, indent=2) if args.json else format_traffic(body))
    return 0


def format_traffic(body: dict[str, Any]) -> str:
    """Who served what, how fast and how often it failed, as a table; then the latest swaps."""
    t = body["totals"]
    lines = [
        f"last {body['window']} ({body['since']} .. {body['until']}): {t['requests']} requests "
        f"({t['requests_per_s']}/s), 4xx {_share(t['client_errors'], t['requests'])}, "
        f"5xx {_share(t['server_errors'], t['requests'])}, p50/p95/p99 {_ms(t['p50_ms'])} / "
        f"{_ms(t['p95_ms'])} / {_ms(t['p99_ms'])} ms"
    ]
    table = [_TRAFFIC_HEAD] + [_traffic_row(m, r) for m in body["models"] for r in m["traffic"]]
    if len(table) > 1:
        lines += align(table)
    if t["unrouted"]:
        lines.append(f"refused before choosing a model: {t['unrouted']}")
    for m in body["models"]:
        drift = m["drift"]
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(m["aliases"].items())) or "no alias"
        lines.append(f"{m['name']}: {aliases}; drift of v{drift['version']}: {drift['status']}")
    return "\n".join(lines + _swap_lines(body["swaps"]))


_TRAFFIC_HEAD = (
    "model",
    "version",
    "variant",
    "requests",
    "4xx",
    "5xx",
    "p50 ms",
    "p95 ms",
    "p99 ms",
)


def _traffic_row(model: dict[str, Any], r: dict[str, Any]) -> tuple[str, ...]:
    return (
        model["name"],
        str(r["version"] or "-"),
        r["variant"] or "-",
        str(r["requests"]),
        _share(r["client_errors"], r["requests"]),
        _share(r["server_errors"], r["requests"]),
        _ms(r["p50_ms"]),
        _ms(r["p95_ms"]),
        _ms(r["p99_ms"]),
    )


def _swap_lines(swaps: list[dict[str, Any]]) -> list[str]:
    if not swaps:
        return []
    lines = ["recent swaps:"]
    for e in swaps[:5]:
        after = e.get("shadow") if e["action"] == "shadow" else e.get("version")
        change = f"{_v(e.get('previous'))} -> {_v(after)}"
        lines.append(
            f"  {e.get('at', '')[:19]}  {e['model']} {e['action']} {e.get('alias', '')} "
            f"{change} by {e.get('actor', '?')}"
        )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _v(version: Any) -> str:
    return f"v{version}" if version else "-"
