"""`make bench-features`: what each telemetry feature costs per request, part by part.

    python -m bench.feature_cost [--quick] [--turns N] [--duration S] [--out PATH]

Our server as `make run` starts it, and beside it the same server with one feature turned off
by its setting (StatsD: SERVING_STATSD_HOST=""; the JSON request log line:
SERVING_LOG_LEVEL=WARNING; the prediction log: SERVING_LOG_SAMPLE=0; the drift monitor and the
dashboard's traffic counts: SERVING_MONITOR_FLUSH=0), all of them off, and the Flask floor
(bench/flask_floor_app.py). All up at once, LR 1 row at 8 connections, in rotating order for
`turns` turns; medians. A feature's cost is the CPU per request it adds: all-on minus the
variant without it (the whole gunicorn tree's CPU, background threads included). Prometheus
and validation cannot be turned off: they are in "all off" minus the floor. Prints a table;
writes bench/results/feature-cost.json. About 3 minutes (quick: about 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, report, servers
from bench.cells import Bench
from bench.statsd_sink import StatsdSink

ROOT = Path(__file__).resolve().parent.parent
OFF = {
    "statsd": {"SERVING_STATSD_HOST": ""},
    "request log line": {"SERVING_LOG_LEVEL": "WARNING"},
    "prediction log": {"SERVING_LOG_SAMPLE": "0"},
    "drift + traffic counts": {"SERVING_MONITOR_FLUSH": "0"},
}


def variants(workdir: Path, store: Path, workers: int, port: int) -> dict[str, servers.Server]:
    """{label: server}: all on, each feature off, all off, and the floor."""
    out = {"all on (make run)": servers.ours(workdir, store, workers, port, [], "ours-all-on")}
    for feature, settings in OFF.items():
        name = "ours-no-" + feature.split()[0]
        out[f"without {feature}"] = servers.ours(workdir, store, workers, port, [], name, settings)
    every = {k: v for settings in OFF.values() for k, v in settings.items()}
    out["all four off"] = servers.ours(workdir, store, workers, port, [], "ours-all-off", every)
    out["flask floor"] = servers.flask_floor(workdir, workers)
    return out


def measure(bench: Bench, by_label: dict[str, servers.Server], turns: int) -> dict[str, list]:
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in by_label}
    labels = list(by_label)
    for turn in range(turns):
        shift = turn % len(labels)
        for label in labels[shift:] + labels[:shift]:
            model = "-" if label == "flask floor" else "lr"
            runs[label].append(bench.cell(by_label[label], model, 1, 8, "features"))
    return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {
        label: {
            "rps": statistics.median(c["rps"] for c in cells),
            "p99_ms": statistics.median(c["latency_ms"]["p99"] for c in cells),
            "cpu_ms_per_request": statistics.median(c["cpu_ms_per_request"] for c in cells),
            "other_cores": statistics.median(c["other_cores"] for c in cells),
            "turns": len(cells),
        }
        for label, cells in runs.items()
    }
    all_on = med["all on (make run)"]["cpu_ms_per_request"]
    costs = {
        feature: round(all_on - med[f"without {feature}"]["cpu_ms_per_request"], 3)
        for feature in OFF
    }
    rest = med["all four off"]["cpu_ms_per_request"] - med["flask floor"]["cpu_ms_per_request"]
    costs["the rest over the floor (validation, routing, Prometheus, hooks, workers)"] = round(
        rest, 3
    )
    total = round(all_on - med["flask floor"]["cpu_ms_per_request"], 3)
    return {"medians": med, "cpu_ms_added": costs, "total_over_floor_ms": total}


def render(result: dict[str, Any]) -> str:
    lines = [f"{'variant':<34}{'req/s':>8}{'p99 ms':>9}{'CPU ms/req':>12}{'others':>8}"]
    for label, m in result["medians"].items():
        lines.append(
            f"{label:<34}{m['rps']:>8.0f}{m['p99_ms']:>9.2f}{m['cpu_ms_per_request']:>12.3f}"
            f"{m['other_cores']:>8.2f}"
        )
    lines += ["", "CPU per request each part adds (all on minus without it), ms:"]
    lines += [f"  {part:<76}{ms:>7.3f}" for part, ms in result["cpu_ms_added"].items()]
    lines.append(
        f"  {'total: all on minus the Flask floor':<76}{result['total_over_floor_ms']:>7.3f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--turns", type=int, default=0)
    parser.add_argument("--duration", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "feature-cost.json"
    )
    args = parser.parse_args()
    turns = args.turns or (1 if args.quick else 3)
    duration = args.duration or (2 if args.quick else 5)
    loadgen.wrk_path()
    started, sink, machine = time.monotonic(), StatsdSink(), report.machine()
    with tempfile.TemporaryDirectory(prefix="serving-features-") as tmp:
        workdir = Path(tmp)
        store, bodies = fixtures.build(workdir, servers.clean_env())
        bench = Bench(duration, 1, bodies, sink, 0)
        by_label = variants(workdir, store, args.workers, sink.port)
        try:
            for server in by_label.values():
                server.start(args.workers)
            runs = measure(bench, by_label, turns)
        finally:
            for server in by_label.values():
                server.stop()
    sink.close()
    result = {"machine": machine, "turns": turns, "duration_s": duration, **summary(runs)}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["cells"] = [c for cells in runs.values() for c in cells]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(render(result))
    print(
        f"\nwritten to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
