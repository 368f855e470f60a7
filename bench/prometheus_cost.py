"""Per-request cost of the Prometheus updates, in-process, in both storage modes.

    .venv/bin/python -m bench.prometheus_cost [--batches 2000] [--json]

One "request" is what the hooks do for a one-row prediction of a classifier: the in-flight gauge
up and down, the request counter, the latency histogram and one predicted-class counter (the
children cached after the first call, as in production). Each mode runs in its own process,
because prometheus_client picks its storage at import: `single` (values in memory, as in tests)
and `multiprocess` (mmapped files, as under gunicorn). The figure is the median over batches of
100 requests of the time per request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BATCH = 100


def measure(batches: int) -> dict[str, float]:
    """Median and p90 microseconds per request in this process's mode."""
    from serving.telemetry.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()
    counts = [("setosa", 1)]

    def one() -> None:
        metrics.request_started()
        metrics.request(200, 1.25, "iris", 1, counts, None)
        metrics.request_finished()

    for _ in range(BATCH):  # first calls build and cache the children
        one()
    per_request = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            one()
        per_request.append((time.perf_counter_ns() - start) / BATCH / 1000.0)
    per_request.sort()
    return {
        "mode": "multiprocess" if metrics.multiprocess else "single",
        "median_us": round(statistics.median(per_request), 2),
        "p90_us": round(per_request[int(len(per_request) * 0.9)], 2),
        "requests": batches * BATCH,
    }


def run_mode(multiprocess: bool, batches: int) -> dict[str, float]:
    """`measure` in a fresh interpreter, with or without a multiprocess directory."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="prom-bench-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run(
            [sys.executable, "-m", "bench.prometheus_cost", "--one", "--batches", str(batches)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.batches)))
        return
    results = [run_mode(multiprocess, args.batches) for multiprocess in (False, True)]
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'mode':<14}{'median µs':>10}{'p90 µs':>9}{'requests':>10}")
    for row in results:
        print(f"{row['mode']:<14}{row['median_us']:>10}{row['p90_us']:>9}{row['requests']:>10}")


if __name__ == "__main__":
    main()
