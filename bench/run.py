"""`make bench`: our server next to the bare-WSGI ceiling and the in-process floor, in one run.

    python -m bench.run [--quick] [--peers] [--workers N] [--duration S] [--retry-seconds S]
                        [--out PATH]
    env: BENCH_QUICK=1, BENCH_PEERS=1, BENCH_WORKERS (default 2), BENCH_DURATION (s per cell)

Builds a temp store (LR Pipeline + 100-tree forest, 20 features) with the real CLI; measures the
in-process floor and hot-path breakdown; drives our server, started as `make run` starts it
(serving-run: gunicorn.conf.py's default workers), with wrk at 1, 8 and 32 connections with 1-row
and 100-row bodies; runs the LR 1-row 8-connection cell on it and on gthread in turns, then on it,
naive Flask (bench/naive_app.py) and the Flask floor (bench/flask_floor_app.py) in turns; then
the bare-WSGI ceiling. Prints tables; writes bench/results/bench.json
(bench-quick.json for a quick run). Full: 4-5 minutes; quick: under 90 s.

With --peers (`make bench-peers`), then the peers phase: ours (as `make run`), MLServer and
MLflow (from their own venvs, bench/peers.py) all up at once and measured side by side, cell
after cell in rotating order, in 2 rounds (1 when quick), no re-measuring; medians over the
rounds. A peer that is not installed, does not start or answers wrongly is reported with the
reason and left out.
Adds about 9 minutes (quick: about 2.5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, peers, procstat, report, servers
from bench.cells import Bench
from bench.statsd_sink import StatsdSink

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONNECTIONS = (1, 8, 32)
GTHREAD = ["-k", "gthread", "--threads", "4"]
OURS_PLAN = [(m, r, c) for m in fixtures.MODELS for r in fixtures.ROW_COUNTS for c in CONNECTIONS]
BARE_PLAN = [("-", r, c) for r in fixtures.ROW_COUNTS for c in CONNECTIONS]
PEER_PLAN = OURS_PLAN


@dataclass(frozen=True)
class Config:
    workers: int
    duration: int  # seconds per cell
    warmup: int  # seconds of load before the first cell of each (server, model, rows) group
    quick: bool
    retry_seconds: int  # allowance for re-measuring cells other processes disturbed
    out: Path
    peers: bool = False  # add the peers phase (MLServer, MLflow)
    peer_rounds: int = 2


def parse_config(argv: list[str] | None = None) -> Config:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=env.get("BENCH_QUICK") == "1")
    parser.add_argument("--peers", action="store_true", default=env.get("BENCH_PEERS") == "1")
    parser.add_argument("--workers", type=int, default=int(env.get("BENCH_WORKERS", "2")))
    parser.add_argument("--duration", type=int, default=int(env.get("BENCH_DURATION", "0")))
    parser.add_argument("--retry-seconds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    duration = args.duration or (2 if args.quick else 5)
    retry = args.retry_seconds if args.retry_seconds is not None else (0 if args.quick else 100)
    name = ("bench-peers" if args.peers else "bench") + ("-quick" if args.quick else "")
    out = args.out or RESULTS / f"{name}.json"
    warmup, rounds = (1, 1) if args.quick else (2, 2)
    return Config(args.workers, duration, warmup, args.quick, retry, out, args.peers, rounds)


def run_hotpath(cfg: Config, workdir: Path, store: Path, bodies: dict[Any, Path], port: int):
    out = workdir / "hotpath.json"
    body1, body100 = bodies[("native", 1)], bodies[("native", 100)]
    argv = [sys.executable, "-m", "bench.hotpath", "--store", str(store), "--out", str(out)]
    argv += ["--statsd-port", str(port), "--body1", str(body1), "--body100", str(body100)]
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
    """Ours (as `make run`) on the matrix; gthread and ours in turns; ours, naive Flask and the
    Flask floor in turns; then the bare-WSGI ceiling."""
    sync = servers.ours(workdir, store, cfg.workers, bench.sink.port, [])
    gthread = servers.ours(workdir, store, cfg.workers, bench.sink.port, GTHREAD)
    naive = servers.naive(workdir, store, cfg.workers, "lr")
    floor = servers.flask_floor(workdir, cfg.workers)
    bare = servers.bare(workdir, cfg.workers)
    turns = 1 if cfg.quick else 3
    cells, infos = [], {}
    try:
        sync.start(cfg.workers)
        cells += [bench.cell(sync, m, r, c, "matrix") for m, r, c in OURS_PLAN]
        gthread.start(cfg.workers)
        for _ in range(turns):
            cells += [bench.cell(s, "lr", 1, 8, "gthread-vs-sync") for s in (sync, gthread)]
        infos |= gthread.finish()
        cells += floor_turns(bench, sync, naive, floor, cfg.workers, turns)
        infos |= sync.finish() | naive.finish() | floor.finish()
        bare.start(cfg.workers)
        cells += [bench.cell(bare, m, r, c, "matrix") for m, r, c in BARE_PLAN]
        infos |= bare.finish()
    finally:
        for server in (sync, gthread, naive, floor, bare):
            server.stop()
    return infos, cells


def floor_turns(bench: Bench, ours, naive, floor, workers: int, turns: int) -> list:
    """LR, 1 row, 8 connections on ours, naive Flask and the Flask floor, in rotating order."""
    naive.start(workers)
    floor.start(workers)
    cells = []
    for turn in range(turns):
        order = [(ours, "lr"), (naive, "lr"), (floor, "-")]
        order = order[turn % 3 :] + order[: turn % 3]
        cells += [bench.cell(server, model, 1, 8, "floor") for server, model in order]
    return cells


def peer_runs(cfg: Config, workdir: Path, store: Path, bench: Bench):
    """Ours (sync) and each peer up at once, every cell measured on each in rotating order."""
    ours = servers.ours(workdir, store, cfg.workers, bench.sink.port, [], name="ours")
    contestants: dict[str, dict[str, servers.Server]] = {
        "ours": dict.fromkeys(fixtures.MODELS, ours)
    }
    status: dict[str, dict[str, Any]] = {}
    # Our own variants and the naive Flask app, measured like the peers.
    gthread = servers.ours(workdir, store, cfg.workers, bench.sink.port, GTHREAD, "ours-gthread")
    contestants["ours-gthread"] = dict.fromkeys(fixtures.MODELS, gthread)
    status["ours-gthread"] = {"status": "ok", "config": "gunicorn.conf.py -k gthread --threads 4"}
    onnx = servers.ours(
        workdir, onnx_store(workdir, store), cfg.workers, bench.sink.port, [], "ours-onnx"
    )
    contestants["ours-onnx"] = {"rf": onnx}  # rf compiled by `serving optimize --onnx`
    status["ours-onnx"] = {"status": "ok", "config": "rf v2 = serving optimize rf 1 --onnx"}
    contestants["naive-flask"] = {
        m: servers.naive(workdir, store, cfg.workers, m) for m in fixtures.MODELS
    }
    status["naive-flask"] = {"status": "ok", "config": "bench/naive_app.py, gunicorn sync"}
    for peer in peers.PEERS:
        try:
            prepared = peers.prepare(peer, workdir, cfg.workers)
        except peers.PeerError as exc:
            status[peer.name] = {"status": "not run", "reason": str(exc)}
            continue
        versions = peer.versions()
        for label, by_model in prepared.items():
            contestants[label] = by_model
            status[label] = {"status": "ok", "versions": versions}
            status[label]["config"] = next(iter(by_model.values())).config
    cells: list[dict[str, Any]] = []
    try:
        ours.start(cfg.workers)
        for model in fixtures.MODELS:
            for rows in fixtures.ROW_COUNTS:
                bench.warm(ours, model, rows)
        for name in [n for n in contestants if n != "ours"]:
            _start_and_verify(name, contestants, status, bench, cfg.workers)
        for turn in range(cfg.peer_rounds):
            for i, (model, rows, conns) in enumerate(PEER_PLAN):
                names = list(contestants)
                shift = (i + turn) % len(names)
                for name in names[shift:] + names[:shift]:
                    cells += _peer_cell(name, contestants, status, bench, (model, rows, conns))
        infos = {}
        for server in _unique(contestants):
            if server.proc is not None and server.proc.poll() is None:
                infos |= server.finish()
    finally:
        for server in _unique(contestants):
            server.stop()
    return infos, cells, status


def onnx_store(workdir: Path, store: Path) -> Path:
    """A copy of the bench store whose rf production is the ONNX compilation of rf v1."""
    target = workdir / "store-onnx"
    shutil.copytree(store, target)
    argv = [sys.executable, "-m", "serving", "--store", str(target)]
    for step in (["optimize", "rf", "1", "--onnx"], ["models", "promote", "rf", "2"]):
        done = subprocess.run(
            [*argv, *step], cwd=workdir, env=servers.clean_env(), capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")
    return target


def _unique(contestants: dict[str, dict[str, servers.Server]]) -> list[servers.Server]:
    return list({id(s): s for by_model in contestants.values() for s in by_model.values()}.values())


def _start_and_verify(name, contestants, status, bench: Bench, workers: int) -> None:
    """Start a peer's servers and check every answer (and warm up) before any timing."""
    try:
        for server in {id(s): s for s in contestants[name].values()}.values():
            server.start(workers)
        for model, server in contestants[name].items():
            for rows in fixtures.ROW_COUNTS:
                bench.warm(server, model, rows)
        ours = contestants["ours"]
        status[name]["agreement_with_ours"] = {
            model: _agreement(
                bench.answers[(server.name, model, 100)],
                bench.answers[(ours[model].name, model, 100)],
            )
            for model, server in contestants[name].items()
        }
    except SystemExit as exc:
        status[name].update(status="failed", reason=str(exc)[-600:])
        for server in contestants.pop(name).values():
            server.stop()


def _agreement(theirs: list[Any], ours: list[Any]) -> float:
    """Share of the 100 rows on which a peer predicts the same class as ours."""
    return sum(str(a) == str(b) for a, b in zip(theirs, ours)) / max(len(ours), 1)


def _peer_cell(name, contestants, status, bench: Bench, cell: tuple[str, int, int]) -> list:
    model, rows, conns = cell
    if name not in contestants or model not in contestants[name]:
        return []
    try:
        return [bench.cell(contestants[name][model], model, rows, conns, "peers")]
    except SystemExit as exc:  # wrk failed against it, or it died: report, go on without it
        if name == "ours":
            raise
        status[name].update(status="failed during the run", reason=str(exc)[-600:])
        for server in contestants.pop(name).values():
            server.stop()
        return []


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
        peer_status = None
        if cfg.peers:
            # side by side, no re-measuring of one contestant alone: medians over the rounds
            bench = Bench(cfg.duration, cfg.warmup, bodies, sink, 0)
            more, peer_cells, peer_status = peer_runs(cfg, workdir, store, bench)
            infos |= more
            cells += peer_cells
    sink.close()
    config = {**asdict(cfg), "out": os.path.relpath(cfg.out, ROOT)}
    results = report.document(config, machine, infos, cells, hotpath, time.monotonic() - started)
    if peer_status is not None:
        results["peers"] = report.peers_summary(peer_status, cells)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.render(results))
    print(f"\nwritten to {config['out']}")
    ours_failed = any(c["non_2xx"] for c in cells if c.get("contestant") in (None, "ours"))
    sys.exit(1 if ours_failed else 0)


if __name__ == "__main__":
    main()
