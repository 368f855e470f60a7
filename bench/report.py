"""Shape the results: one dict per cell, the JSON document, and the plain-text tables."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from importlib import metadata
from typing import Any

_LATENCIES = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
_HEADER = (
    f"{'server':<16}{'model':>5}{'rows':>5}{'conns':>6}{'req/s':>9}{'p50 ms':>8}{'p95 ms':>8}"
    f"{'p99 ms':>8}{'non2xx':>7}{'sockerr':>8}{'CPU ms/req':>11}{'srv cores':>10}"
    f"{'wrk cores':>10}{'others':>7}{'app ms':>8}  worker RSS MiB"
)
NOISY = 0.25  # cores used by other processes during a cell above which it is flagged "!"


def cell(
    server: str,
    model: str,
    rows: int,
    result: dict[str, Any],
    cpu_s: float,
    statuses: dict[str, int],
) -> dict[str, Any]:
    """One measured cell from wrk's result, the server tree's CPU and StatsD's status counts."""
    seconds, requests = result["duration_us"] / 1e6, result["requests"]
    errors = result["errors"]
    non_2xx_statsd = sum(count for status, count in statuses.items() if not status.startswith("2"))
    return {
        "server": server,
        "keep_alive": server.startswith("serving") or server.startswith("ours"),
        "model": model,
        "rows": rows,
        "connections": result["connections"],
        "threads": result["threads"],
        "seconds": round(seconds, 2),
        "requests": requests,
        "rps": round(requests / seconds, 1),
        "latency_ms": {k: round(result["latency_us"][k] / 1000, 3) for k in _LATENCIES},
        "non_2xx": max(errors["status"], non_2xx_statsd),
        "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
        "server_cpu_s": round(cpu_s, 2),
        "cpu_ms_per_request": round(cpu_s * 1000 / requests, 3) if requests else None,
        "server_cores": round(cpu_s / seconds, 2),
        "wrk_cores": round(result["wrk_cpu_s"] / seconds, 2),
        "statsd_statuses": statuses,
    }


def cell_line(c: dict[str, Any]) -> str:
    lat, rss = c["latency_ms"], "/".join(f"{r:.0f}" for r in c["worker_rss_mib"] if r)
    return (
        f"{c['server']:<16}{c['model']:>5}{c['rows']:>5}{c['connections']:>6}{c['rps']:>9.0f}"
        f"{lat['p50']:>8.2f}{lat['p95']:>8.2f}{lat['p99']:>8.2f}{c['non_2xx']:>7}"
        f"{sum(c['socket_errors'].values()):>8}{c['cpu_ms_per_request'] or 0:>11.3f}"
        f"{c['server_cores']:>10.2f}{c['wrk_cores']:>10.2f}{c['other_cores']:>6.2f}"
        f"{'!' if c['other_cores'] > NOISY else ' '}"
        f"{c['app_ms_p50'] if c.get('app_ms_p50') is not None else '-':>7}  {rss}"
        + (f" ({c['worker_restarts']} restarted)" if c.get("worker_restarts") else "")
        + (f" [{c['attempts']} attempts]" if c.get("attempts", 1) > 1 else "")
    )


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as cpuinfo:
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")]
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    packages = ("gunicorn", "flask", "scikit-learn", "numpy", "orjson", "marshmallow")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": models[0] if models else platform.processor(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk.split(" [")[0] if wrk else "?",
        "loadavg_at_start": os.getloadavg(),
        "packages": {name: metadata.version(name) for name in packages},
    }


def gthread_vs_sync(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the turns of the LR 1-row 8-connection cell on each worker class."""
    out: dict[str, Any] = {"cell": "lr, 1 row, 8 connections, measured in turns"}
    for kind in ("run", "gthread"):
        runs = [
            c for c in cells if c.get("phase") == "gthread-vs-sync" and c["server"].endswith(kind)
        ]
        if runs:
            out[kind] = {
                "turns": len(runs),
                "rps": statistics.median(c["rps"] for c in runs),
                "p50_ms": statistics.median(c["latency_ms"]["p50"] for c in runs),
                "p99_ms": statistics.median(c["latency_ms"]["p99"] for c in runs),
                "cpu_ms_per_request": statistics.median(c["cpu_ms_per_request"] for c in runs),
            }
    return out


FLOOR_CONTESTANTS = ("ours", "naive-flask", "flask-floor")


def floor_summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the turns of ours, naive Flask and the Flask floor (LR, 1 row, 8
    connections), and ours against each: the ratios issue 14 sets goals for."""
    out: dict[str, Any] = {"cell": "lr, 1 row, 8 connections, measured in turns"}
    for name in FLOOR_CONTESTANTS:
        runs = [c for c in cells if c.get("phase") == "floor" and _floor_name(c) == name]
        if runs:
            out[name] = {
                "turns": len(runs),
                "rps": statistics.median(c["rps"] for c in runs),
                "p99_ms": statistics.median(c["latency_ms"]["p99"] for c in runs),
                "cpu_ms_per_request": statistics.median(c["cpu_ms_per_request"] for c in runs),
                "other_cores": statistics.median(c["other_cores"] for c in runs),
            }
    if all(name in out for name in FLOOR_CONTESTANTS):
        ours, naive, floor = (out[n] for n in FLOOR_CONTESTANTS)
        out["ratios"] = {
            "ours_per_floor_rps": round(ours["rps"] / floor["rps"], 2),
            "ours_per_naive_rps": round(ours["rps"] / naive["rps"], 2),
            "ours_per_floor_p99": round(ours["p99_ms"] / floor["p99_ms"], 2),
            "cpu_ms_added_over_floor": round(
                ours["cpu_ms_per_request"] - floor["cpu_ms_per_request"], 3
            ),
        }
    return out


def _floor_name(c: dict[str, Any]) -> str:
    return "ours" if c.get("contestant", "").startswith("serving") else c.get("contestant", "")


def _floor_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["", f"ours, naive Flask and the Flask floor: {summary['cell']} (medians)"]
    for name in FLOOR_CONTESTANTS:
        if name in summary:
            c = summary[name]
            lines.append(
                f"{name:<12}{c['rps']:>9.0f} req/s  p99 {c['p99_ms']:.2f} ms"
                f"  {c['cpu_ms_per_request']:.3f} CPU ms/req  ({c['turns']} turns)"
            )
    if "ratios" in summary:
        r = summary["ratios"]
        lines.append(
            f"ours / floor {r['ours_per_floor_rps']:.2f}x req/s,"
            f" {r['ours_per_floor_p99']:.2f}x p99;"
            f" ours / naive {r['ours_per_naive_rps']:.2f}x req/s;"
            f" CPU added over the floor {r['cpu_ms_added_over_floor']:.3f} ms/req"
        )
    return lines


def document(
    config: dict[str, Any],
    machine_info: dict[str, Any],
    servers: dict[str, Any],
    cells: list[dict[str, Any]],
    hotpath: dict[str, Any],
    elapsed: float,
) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info,
        "config": config,
        "elapsed_s": round(elapsed, 1),
        "servers": servers,
        "cells": cells,
        "gthread_vs_sync": gthread_vs_sync(cells),
        "floor_vs_ours": floor_summary(cells),
        "floor": hotpath["floor"],
        "breakdown": hotpath["breakdown"],
        "hotpath_timer": hotpath["timer"],
        "hotpath_other_cores": hotpath.get("other_cores"),
    }


def hotpath_tables(hotpath: dict[str, Any]) -> str:
    lines = [
        "",
        "In-process model.predict, no HTTP (median µs; input: what the server feeds it)",
        f"(other processes used {hotpath.get('other_cores', '?')} cores meanwhile)",
    ]
    lines.append(f"{'model':<7}{'rows':>5}{'input':>7}{'predict':>10}{'as DataFrame':>14}")
    for f in hotpath["floor"]:
        lines.append(
            f"{f['model']:<7}{f['rows']:>5}{f['input']:>7}{f['predict_us']:>10.1f}"
            f"{f['predict_dataframe_us']:>14.1f}"
        )
    lines += ["", "Hot path of one LR predict request, in process (median µs)"]
    lines.append(f"{'part':<52}{'1 row':>9}{'100 rows':>10}")
    for row in hotpath["breakdown"]:
        lines.append(f"{row['part']:<52}{row['rows_1']:>9.1f}{row['rows_100']:>10.1f}")
    return "\n".join(lines)


def _servers_table(servers: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Memory (MiB): per worker VmRSS (PSS), idle / after its cells; total = master + workers",
    ]
    for name, info in servers.items():
        row = f"{name:<16}"
        for when in ("idle", "after_load"):
            mem = info[when]
            workers = "/".join(
                f"{r:.0f} ({p:.0f})" for r, p in zip(mem["worker_rss_mib"], mem["worker_pss_mib"])
            )
            total = f"{mem['total_rss_mib']:.0f} ({mem['total_pss_mib']:.0f})"
            row += f" {when:<10} {workers:<20} total {total:<10}"
        logs = info.get("request_log_lines")
        lines.append(row + (f"; {logs} request log lines" if logs is not None else ""))
    return lines


def _gthread_lines(pair: dict[str, Any]) -> list[str]:
    lines = ["", f"gthread (-k gthread --threads 4) vs make run's: {pair['cell']} (medians)"]
    for kind in ("run", "gthread"):
        if kind in pair:
            c = pair[kind]
            lines.append(
                f"{kind:<8}{c['rps']:>9.0f} req/s  p50 {c['p50_ms']:.2f}  p99 {c['p99_ms']:.2f} ms"
                f"  {c['cpu_ms_per_request']:.3f} CPU ms/req  ({c['turns']} turns)"
            )
    return lines


def peers_summary(status: dict[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The peers phase: each peer's status, and per cell each contestant's medians over rounds."""
    groups: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]] = {}
    for c in cells:
        if c.get("phase") == "peers":
            key = (c["model"], c["rows"], c["connections"])
            groups.setdefault(key, {}).setdefault(c["contestant"], []).append(c)
    table = []
    for (model, rows, conns), by_name in groups.items():
        entry: dict[str, Any] = {"model": model, "rows": rows, "connections": conns}
        entry["contestants"] = {name: _medians(runs) for name, runs in by_name.items()}
        table.append(entry)
    return {"status": status, "table": table}


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Any) -> float:
        return round(statistics.median(get(c) for c in runs), 3)

    return {
        "rounds": len(runs),
        "rps": med(lambda c: c["rps"]),
        "p50_ms": med(lambda c: c["latency_ms"]["p50"]),
        "p95_ms": med(lambda c: c["latency_ms"]["p95"]),
        "p99_ms": med(lambda c: c["latency_ms"]["p99"]),
        "cpu_ms_per_request": med(lambda c: c["cpu_ms_per_request"] or 0),
        "other_cores": med(lambda c: c["other_cores"]),
        "non_2xx": sum(c["non_2xx"] for c in runs),
        "socket_errors": sum(sum(c["socket_errors"].values()) for c in runs),
    }


def _peer_lines(peers: dict[str, Any]) -> list[str]:
    lines = ["", "Peers, side by side (medians over the rounds; x = ours req/s / this req/s)"]
    for name, st in peers["status"].items():
        line = f"  {name}: {st['status']}"
        if st.get("versions"):
            line += " " + ", ".join(f"{k} {v}" for k, v in st["versions"].items())
        if st.get("agreement_with_ours"):
            same = ", ".join(f"{m} {v:.0%}" for m, v in st["agreement_with_ours"].items())
            line += f"; same class as ours on the 100 rows: {same}"
        lines.append(line + (f"\n    reason: {st['reason']}" if st.get("reason") else ""))
    lines.append(
        f"{'model':<6}{'rows':>5}{'conns':>6}  {'server':<10}{'req/s':>8}{'p50 ms':>8}"
        f"{'p95 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}{'non2xx':>7}{'others':>7}{'x':>6}"
    )
    for entry in peers["table"]:
        ours = entry["contestants"].get("ours", {}).get("rps")
        for name, c in entry["contestants"].items():
            ratio = f"{ours / c['rps']:.2f}" if ours and c["rps"] and name != "ours" else ""
            lines.append(
                f"{entry['model']:<6}{entry['rows']:>5}{entry['connections']:>6}  {name:<10}"
                f"{c['rps']:>8.0f}{c['p50_ms']:>8.2f}{c['p95_ms']:>8.2f}{c['p99_ms']:>8.2f}"
                f"{c['cpu_ms_per_request']:>11.3f}{c['non_2xx'] + c['socket_errors']:>7}"
                f"{c['other_cores']:>7.2f}{ratio:>6}"
            )
    return lines


def render(doc: dict[str, Any]) -> str:
    m, cfg = doc["machine"], doc["config"]
    lines = [
        f"serving bench {doc['date']}: {m['nproc']} x {m['cpu']}, Python {m['python']}, "
        f"{cfg['workers']} workers, {cfg['duration']} s per cell, {m['wrk']}",
        "ours (serving-run: gunicorn.conf.py's default gevent workers, as `make run`) and gthread "
        "keep connections alive; sync workers (naive, floor, bare) close each one: a TCP connect "
        "per request",
        f"others: cores used by other processes during the cell ('!' above {NOISY}); "
        "app ms: median duration_ms of the server's request log lines (Flask hooks to response)",
        "",
        _HEADER,
        *(cell_line(c) for c in doc["cells"] if c["phase"] == "matrix"),
        "gthread vs make run's workers, in turns:",
        *(cell_line(c) for c in doc["cells"] if c["phase"] == "gthread-vs-sync"),
        *_servers_table(doc["servers"]),
        *_gthread_lines(doc["gthread_vs_sync"]),
        "ours, naive Flask and the Flask floor, in turns:",
        *(cell_line(c) for c in doc["cells"] if c["phase"] == "floor"),
        *_floor_lines(doc["floor_vs_ours"]),
        hotpath_tables({**doc, "other_cores": doc["hotpath_other_cores"]}),
        *(_peer_lines(doc["peers"]) if "peers" in doc else []),
        f"\nwhole run: {doc['elapsed_s']} s",
    ]
    return "\n".join(lines)
