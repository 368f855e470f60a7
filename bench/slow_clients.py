"""Slow clients: each worker class, calm and with 50 stalled connections, side by side.

    python -m bench.slow_clients [--quick] [--rounds N] [--seconds S] [--stalled N]

Builds the bench store (bench/fixtures.py: LR Pipeline + forest, reference data) and starts our
server three times from gunicorn.conf.py, 2 workers each, every feature on, differing only in
GUNICORN_WORKER_CLASS: sync, gthread (GUNICORN_THREADS=4) and gevent. All three are up at once
and measured in turns, cell after cell, rotating the order, in `rounds` rounds; the tables have
the medians. Cells, all `POST /v1/models/lr/predict` with the 1-row body through wrk:
- calm at 1, 8 and 32 connections;
- 8 connections while N stalled connections (bench/stallers.py) send partial headers;
- the same while N stalled connections declare a 1 MiB body and send 17 bytes of it.
Writes bench/results/slow-clients.json (git-ignored) and prints markdown tables.
Full (2 rounds of 5 s cells): about 4 minutes; --quick (1 round of 3 s): about 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, report, servers
from bench.stallers import Stallers
from bench.statsd_sink import StatsdSink

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "slow-clients.json"
WORKERS = 2
VARIANTS: dict[str, dict[str, str]] = {
    "sync": {"GUNICORN_WORKER_CLASS": "sync"},
    "gthread": {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "4"},
    "gevent": {"GUNICORN_WORKER_CLASS": "gevent"},
}
# (name, connections, kind of stalled client or None)
CELLS = [
    ("calm-1", 1, None),
    ("calm-8", 8, None),
    ("calm-32", 32, None),
    ("stalled-headers-8", 8, "headers"),
    ("stalled-body-8", 8, "body"),
]
SETTLE = 1.0  # seconds the stalled clients get to be accepted before the load starts


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--stalled", type=int, default=50)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.seconds = args.seconds or (3 if args.quick else 5)
    return args


def start_servers(workdir: Path, store: Path, statsd_port: int) -> dict[str, servers.Server]:
    started = {}
    for name, extra in VARIANTS.items():
        server = servers.ours(workdir, store, WORKERS, statsd_port, [], name=f"serving-{name}")
        server.env.update(extra)
        started[name] = server.start(WORKERS)
    return started


def measure(server: servers.Server, body: Path, cell: tuple, seconds: int, stalled: int) -> dict:
    name, connections, kind = cell
    stallers = Stallers(server.port, kind, stalled, max_seconds=seconds + 30) if kind else None
    if stallers:
        stallers.start()
        time.sleep(SETTLE)
    try:
        run = loadgen.run(server.url("/v1/models/lr/predict"), body, connections, seconds)
    finally:
        if stallers:
            stallers.stop()
    errors = run["errors"]
    result = {
        "cell": name,
        "connections": connections,
        "rps": round(run["requests"] / (run["duration_us"] / 1e6), 1),
        "p50_ms": run["latency_us"]["p50"] / 1000,
        "p99_ms": run["latency_us"]["p99"] / 1000,
        "max_ms": run["latency_us"]["max"] / 1000,
        "requests": run["requests"],
        "errors": {key: value for key, value in errors.items() if value},
    }
    if stallers:
        result["stalled"] = {"count": stalled, "kind": kind, "dropped_by_server": stallers.reopened}
    return result


def recover(server: servers.Server, timeout: float = 90.0) -> float:
    """Seconds until the server answers /health/ready again after a stalled cell."""
    started = time.monotonic()
    while not server._ready():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{server.name} did not recover in {timeout}s:\n{server.log_tail()}")
        time.sleep(0.2)
    return round(time.monotonic() - started, 2)


def medians(runs: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {
        key: statistics.median(run[key] for run in runs) for key in ("rps", "p50_ms", "p99_ms")
    }
    out["max_ms"] = max(run["max_ms"] for run in runs)
    out["errors"] = sum(sum(run["errors"].values()) for run in runs)
    out["dropped_by_server"] = sum(
        run.get("stalled", {}).get("dropped_by_server", 0) for run in runs
    )
    return out


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| worker class | " + " | ".join(name for name, _, _ in CELLS) + " |",
        "| --- |" + " --- |" * len(CELLS),
    ]
    for variant, cells in summary.items():
        row = []
        for name, _, _ in CELLS:
            cell = cells[name]
            text = f"{cell['rps']:.0f} ({cell['p99_ms']:.1f})"
            if cell["errors"]:
                text += f" {cell['errors']} err"
            row.append(text)
        lines.append(f"| {variant} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdicts(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []
    for variant, cells in summary.items():
        calm = cells["calm-8"]["p99_ms"]
        for kind in ("stalled-headers-8", "stalled-body-8"):
            cell = cells[kind]
            ratio = cell["p99_ms"] / calm if calm else float("inf")
            ok = not cell["errors"] and cell["rps"] > 0 and ratio <= 2
            out.append(
                f"{variant} {kind}: p99 {cell['p99_ms']:.1f} ms = {ratio:.2f}x calm, "
                f"{cell['rps']:.0f} req/s, {cell['errors']} errors: {'PASS' if ok else 'FAIL'}"
            )
    return out


def main() -> None:
    args = parse()
    loadgen.wrk_path()
    started, sink, machine = time.monotonic(), StatsdSink(), report.machine()
    runs: dict[str, dict[str, list[dict]]] = {v: {c[0]: [] for c in CELLS} for v in VARIANTS}
    recoveries: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="serving-slow-") as tmp:
        workdir = Path(tmp)
        store, bodies = fixtures.build(workdir, servers.clean_env())
        body = bodies[("native", 1)]
        up = start_servers(workdir, store, sink.port)
        infos: dict[str, Any] = {}
        try:
            for server in up.values():  # warm-up
                loadgen.run(server.url("/v1/models/lr/predict"), body, 8, 1)
            order = list(VARIANTS)
            for round_ in range(args.rounds):
                for index, cell in enumerate(CELLS):
                    shift = (round_ + index) % len(order)
                    for variant in order[shift:] + order[:shift]:
                        server = up[variant]
                        result = measure(server, body, cell, args.seconds, args.stalled)
                        runs[variant][cell[0]].append(result)
                        if cell[2]:
                            recoveries[variant].append(recover(server))
                        print(variant, json.dumps(result), flush=True)
        finally:
            for name, server in up.items():
                infos[name] = server.finish()
    sink.close()
    summary = {v: {c: medians(r) for c, r in cells.items()} for v, cells in runs.items()}
    document = {
        "machine": machine,
        "config": {
            "workers": WORKERS,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "stalled": args.stalled,
        },
        "summary": summary,
        "recovery_s": recoveries,
        "servers": infos,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print("\nreq/s (p99 ms), LR 1 row, medians of", args.rounds, "rounds:\n")
    print(table(summary))
    print("\n" + "\n".join(verdicts(summary)))
    print(f"\nwritten to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
