"""`make bench`: our server next to the bare-WSGI ceiling and the in-process floor, in one run.

    python -m bench.run [--quick] [--workers N] [--duration S] [--retry-seconds S] [--out PATH]
    env: BENCH_QUICK=1, BENCH_WORKERS (default 2), BENCH_DURATION (s per cell)

Builds a temp store (LR Pipeline + 100-tree forest, 20 features) with the real CLI; measures the
in-process floor and hot-path breakdown; drives our server (sync workers) with wrk at 1, 8 and 32
connections with 1-row and 100-row bodies; runs the LR 1-row 8-connection cell on sync and gthread
servers in turns; then the bare-WSGI ceiling. Prints tables; writes bench/results/bench.json
(bench-quick.json for a quick run). Full: 4-5 minutes; quick: under 90 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import fixtures, loadgen, procstat, report, servers
from bench.cells import Bench
from bench.statsd_sink import StatsdSink

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONNECTIONS = (1, 8, 32)
GTHREAD = ["-k", "gthread", "--threads", "4"]
OURS_PLAN = [(m, r, c) for m in fixtures.MODELS for r in fixtures.ROW_COUNTS for c in CONNECTIONS]
BARE_PLAN = [("-", r, c) for r in fixtures.ROW_COUNTS for c in CONNECTIONS]


@dataclass(frozen=True)
class Config:
    workers: int
    duration: int  # seconds per cell
    warmup: int  # seconds of load before the first cell of each (server, model, rows) group
    quick: bool
    retry_seconds: int  # allowance for re-measuring cells other processes disturbed
    out: Path


def parse_config(argv: list[str] | None = None) -> Config:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=env.get("BENCH_QUICK") == "1")
    parser.add_argument("--workers", type=int, default=int(env.get("BENCH_WORKERS", "2")))
    parser.add_argument("--duration", type=int, default=int(env.get("BENCH_DURATION", "0")))
    parser.add_argument("--retry-seconds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    duration = args.duration or (2 if args.quick else 5)
    retry = args.retry_seconds if args.retry_seconds is not None else (0 if args.quick else 100)
    out = args.out or RESULTS / ("bench-quick.json" if args.quick else "bench.json")
    return Config(args.workers, duration, 1 if args.quick else 2, args.quick, retry, out)


def run_hotpath(cfg: Config, workdir: Path, store: Path, bodies: dict[int, Path], port: int):
    out = workdir / "hotpath.json"
    argv = [sys.executable, "-m", "bench.hotpath", "--store", str(store), "--out", str(out)]
    argv += ["--statsd-port", str(port), "--body1", str(bodies[1]), "--body100", str(bodies[100])]
    argv += ["--data-dir", str(workdir / "hotpath-data")] + (["--quick"] if cfg.quick else [])
    env = servers.clean_env({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    own, busy, started = _children_cpu(), procstat.machine_busy_seconds(), time.monotonic()
    subprocess.run(argv, cwd=workdir, env=env, check=True)
    own, busy = _children_cpu() - own, procstat.machine_busy_seconds() - busy
    hotpath = json.loads(out.read_text())
    hotpath["other_cores"] = round((busy - own) / (time.monotonic() - started), 2)
    return hotpath


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def http_runs(cfg: Config, workdir: Path, store: Path, bench: Bench):
    """Ours (sync) on the matrix; gthread and sync in turns; then the bare-WSGI ceiling."""
    sync = servers.ours(workdir, store, cfg.workers, bench.sink.port, [])
    gthread = servers.ours(workdir, store, cfg.workers, bench.sink.port, GTHREAD)
    bare = servers.bare(workdir, cfg.workers)
    cells, infos = [], {}
    try:
        sync.start(cfg.workers)
        cells += [bench.cell(sync, m, r, c, "matrix") for m, r, c in OURS_PLAN]
        gthread.start(cfg.workers)
        for _ in range(1 if cfg.quick else 2):
            cells += [bench.cell(s, "lr", 1, 8, "gthread-vs-sync") for s in (sync, gthread)]
        infos |= sync.finish() | gthread.finish()
        bare.start(cfg.workers)
        cells += [bench.cell(bare, m, r, c, "matrix") for m, r, c in BARE_PLAN]
        infos |= bare.finish()
    finally:
        for server in (sync, gthread, bare):
            server.stop()
    return infos, cells


def main() -> None:
    cfg = parse_config()
    loadgen.wrk_path()
    started, sink, machine = time.monotonic(), StatsdSink(), report.machine()
    print(
        f"bench: {cfg.workers} workers, {cfg.duration} s per cell{' (quick)' if cfg.quick else ''}"
    )
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        workdir = Path(tmp)
        store, bodies = fixtures.build(workdir, servers.clean_env())
        hotpath = run_hotpath(cfg, workdir, store, bodies, sink.port)
        print(report.hotpath_tables(hotpath), flush=True)
        bench = Bench(cfg.duration, cfg.warmup, bodies, sink, cfg.retry_seconds)
        infos, cells = http_runs(cfg, workdir, store, bench)
    sink.close()
    config = {**asdict(cfg), "out": os.path.relpath(cfg.out, ROOT)}
    results = report.document(config, machine, infos, cells, hotpath, time.monotonic() - started)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.render(results))
    print(f"\nwritten to {config['out']}")
    sys.exit(1 if any(c["non_2xx"] for c in cells) else 0)


if __name__ == "__main__":
    main()
