"""Benchmark `serving batch` against the in-process floor: pandas read_csv in chunks + predict.

    .venv/bin/python bench/batch_bench.py [--rows 1000000] [--features 20] [--workers 1]

Generates a CSV (rows x features, LogisticRegression), registers the model in a temp store, then
times, each in its own process so that peak RSS is its own:
  - ours:  `python -m serving batch` end to end (wall clock, so interpreter start, imports and
           model load included) and its own scoring-loop time from the summary line;
  - floor: `pd.read_csv(chunksize=)` + `model.predict(chunk)` in a loop, timed inside the loop
           (imports and model load excluded): what any batch scorer must at least spend.
Each is run --repeat times and the best kept (a shared machine is noisy). Prints a table and
writes bench/results/batch.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "batch.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: serving's own")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rss-sizes", default="30000,300000", help="extra sizes for peak RSS")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept")
    parser.add_argument(
        "--floor", nargs=3, metavar=("CSV", "MODEL", "CHUNK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.floor:
        _floor(Path(args.floor[0]), Path(args.floor[1]), int(args.floor[2]))
        return
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        report = _bench(Path(tmp), args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


def _bench(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    csv, artifact = tmp / "input.csv", tmp / "model.joblib"
    started = time.perf_counter()
    _generate(csv, artifact, args.rows, args.features)
    generated = time.perf_counter() - started
    store = tmp / "store"
    _run([*_serving(store), "models", "register", "bench", str(artifact), "--activate"])
    chunk = args.chunk_size or max(1_000, min(100_000, 2_000_000 // args.features))
    floor_command = [sys.executable, __file__, "--floor", str(csv), str(artifact), str(chunk)]
    floors = [_floor_run(floor_command) for _ in range(args.repeat)]
    floor = min(floors, key=lambda f: f["seconds"])
    runs = [_ours(store, csv, tmp / "out.csv", chunk, args.workers) for _ in range(args.repeat)]
    ours = {
        **min(runs, key=lambda r: r["wall_seconds"]),
        "loop_seconds": min(r["loop_seconds"] for r in runs),
        "rows_per_s_steady": max(r["rows_per_s_steady"] for r in runs),
        "all_wall_seconds": [r["wall_seconds"] for r in runs],
        "all_loop_seconds": [r["loop_seconds"] for r in runs],
    }
    floor["all_seconds"] = [f["seconds"] for f in floors]
    rss = {}
    for size in [int(s) for s in args.rss_sizes.split(",") if s] + [args.rows]:
        if size == args.rows:
            rss[size] = ours["peak_rss_mb"]
            continue
        head = tmp / f"head-{size}.csv"
        _head(csv, head, size)
        rss[size] = _ours(store, head, tmp / "out-head.csv", chunk, args.workers)["peak_rss_mb"]
    return {
        "rows": args.rows,
        "features": args.features,
        "chunk_size": chunk,
        "workers": args.workers,
        "repeat": args.repeat,
        "input_mb": round(csv.stat().st_size / 1e6, 1),
        "generate_seconds": round(generated, 1),
        "floor": floor,
        "ours": ours,
        "ratio_steady": round(ours["rows_per_s_steady"] / floor["rows_per_s"], 3),
        "ratio_end_to_end": round(ours["rows_per_s_end_to_end"] / floor["rows_per_s"], 3),
        "peak_rss_mb_by_rows": rss,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def _generate(csv: Path, artifact: Path, rows: int, features: int) -> None:
    import joblib
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    names = [f"f{i:02d}" for i in range(features)]
    weights = rng.normal(size=features)
    with pacsv.CSVWriter(csv, pa.schema([(n, pa.float64()) for n in names])) as writer:
        for start in range(0, rows, 100_000):
            block = np.round(rng.normal(size=(min(100_000, rows - start), features)), 6)
            writer.write_table(pa.table(dict(zip(names, block.T))))
            if start == 0:
                train = pd.DataFrame(block[:10_000], columns=names)
                target = (train.to_numpy() @ weights > 0).astype(int)
                joblib.dump(LogisticRegression(max_iter=1000).fit(train, target), artifact)


def _head(source: Path, target: Path, rows: int) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        for _ in range(rows + 1):
            dst.write(src.readline())


def _ours(store: Path, csv: Path, out: Path, chunk: int, workers: int) -> dict[str, Any]:
    command = [*_serving(store), "batch", "bench", str(csv), "-o", str(out)]
    command += ["--chunk-size", str(chunk), "--workers", str(workers)]
    _, stderr, wall, peak_mb = _measured(command)
    summary = stderr.strip().splitlines()[-1]
    rows = int(re.search(r"([\d,]+) rows read", summary)[1].replace(",", ""))  # type: ignore[index]
    loop = float(re.search(r" in ([\d.]+) s", summary)[1])  # type: ignore[index]
    return {
        "rows": rows,
        "wall_seconds": round(wall, 3),
        "loop_seconds": loop,
        "rows_per_s_end_to_end": round(rows / wall),
        "rows_per_s_steady": round(rows / loop),
        "peak_rss_mb": peak_mb,
        "summary": summary,
    }


# Linux keeps a child's peak RSS from before exec (a copy of its parent): a child forked from
# this (large) process would report our size. A tiny launcher spawns the command instead and
# reports its wall time and rusage on the last line of stdout.
LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss)
"""


def _measured(command: list[str]) -> tuple[str, str, float, float]:
    """(stdout, stderr, wall seconds, peak RSS MB) of `command` alone."""
    launched = [sys.executable, "-S", "-c", LAUNCHER, *command]
    result = subprocess.run(launched, cwd=ROOT, capture_output=True, text=True, check=False)
    *lines, last = result.stdout.strip().splitlines() or [""]
    code, wall, peak_kb = last.split() if last.count(" ") == 2 else ("?", "0", "0")
    if code != "0":
        raise SystemExit(f"{' '.join(command[:6])}... failed:\n{result.stderr}")
    return "\n".join(lines), result.stderr, float(wall), round(int(peak_kb) / 1024, 1)


def _floor_run(command: list[str]) -> dict[str, Any]:
    stdout, _, _, peak_mb = _measured(command)
    return {**json.loads(stdout), "peak_rss_mb": peak_mb}


def _floor(csv: Path, artifact: Path, chunk: int) -> None:
    import joblib
    import pandas as pd

    model = joblib.load(artifact)
    started, rows = time.perf_counter(), 0
    for frame in pd.read_csv(csv, chunksize=chunk):
        model.predict(frame)
        rows += len(frame)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}
        )
    )


def _serving(store: Path) -> list[str]:
    return [sys.executable, "-m", "serving", "--store", str(store)]


def _run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{result.stderr}")
    return result.stdout


def _print(report: dict[str, Any]) -> None:
    floor, ours = report["floor"], report["ours"]
    print(
        f"{report['rows']:,} rows x {report['features']} features, {report['input_mb']} MB CSV, "
        f"chunks of {report['chunk_size']:,}, {report['workers']} worker(s), "
        f"{report['machine']['cpus']} CPUs, best of {report['repeat']}"
    )
    rows = [
        ("floor: read_csv + predict (in-process)", floor["seconds"], floor["rows_per_s"]),
        ("serving batch, scoring loop", ours["loop_seconds"], ours["rows_per_s_steady"]),
        (
            "serving batch, end to end (process)",
            ours["wall_seconds"],
            ours["rows_per_s_end_to_end"],
        ),
    ]
    print(f"\n{'':42} {'seconds':>9} {'rows/s':>12}")
    for label, seconds, rate in rows:
        print(f"{label:42} {seconds:>9.2f} {rate:>12,}")
    print(
        f"\nratio to floor: {report['ratio_steady']:.0%} (scoring loop), "
        f"{report['ratio_end_to_end']:.0%} (end to end)"
    )
    sizes = ", ".join(f"{n:,} rows {mb} MB" for n, mb in report["peak_rss_mb_by_rows"].items())
    print(f"peak RSS, serving batch: {sizes}; floor {floor['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
