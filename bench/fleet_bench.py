"""`make bench-fleet` (part of `make bench`): the shared store and database against the defaults.

Side by side in one run, on this machine (the object store and the database share its cores):
  1. LR 1-row at 8 connections: ours as `make run` runs it (a local store, SQLite) against ours
     on S3 (a real SeaweedFS) + PostgreSQL, in alternating rounds; medians and their ratio.
  2. S3 requests a worker makes per minute when idle: the poller of a worker (the same loader
     code) over one model for 30 s, every request counted by boto3's event hooks.
  3. Time for a new replica to be ready from S3 with a ~100 MB forest: cold cache (downloads
     and verifies it) and warm cache (the machine has it), against the local store.
The test servers (tests/servers/seaweed.py, tests/pg.py; PostgreSQL with fsync off) are the
ones the test suite starts. Results: bench/results/fleet.json (printed as a table).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import fixtures, loadgen, servers
from bench.statsd_sink import StatsdSink
from tests import pg
from tests.servers.seaweed import BUCKET, SeaweedS3

ROUNDS = int(os.environ.get("BENCH_FLEET_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_DURATION", "8"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
OUT = servers.ROOT / "bench" / "results" / "fleet.json"


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "serving", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"serving {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def throughput(workdir: Path, store: Path, body: Path, s3: SeaweedS3, db_url: str) -> dict:
    sink = StatsdSink()
    url = f"s3://{BUCKET}/bench/models"
    _cli(servers.clean_env({**s3.env(), "SERVING_DATA_DIR": str(workdir / "cli")}),
         "store", "copy", str(store), url)  # fmt: skip
    local = servers.ours(workdir, store, WORKERS, sink.port, [], name="local-sqlite")
    shared = servers.ours(workdir, store, WORKERS, sink.port, [], name="s3-postgresql")
    shared.env.update(s3.env(), SERVING_MODEL_STORE=url, SERVING_DATABASE_URL=db_url)
    runs: dict[str, list[dict]] = {"local-sqlite": [], "s3-postgresql": []}
    try:
        for server in (local, shared):
            server.start(WORKERS)
            loadgen.run(server.url("/v1/models/lr/predict"), body, 8, 2)  # warm-up
        for _ in range(ROUNDS):
            for server in (local, shared):
                result = loadgen.run(server.url("/v1/models/lr/predict"), body, 8, SECONDS)
                runs[server.name].append(result)
    finally:
        for server in (local, shared):
            server.stop()
        sink.close()
    summary = {name: _summary(results) for name, results in runs.items()}
    ratio = summary["s3-postgresql"]["rps"] / summary["local-sqlite"]["rps"]
    return {"rounds": ROUNDS, "seconds": SECONDS, **summary, "ratio": round(ratio, 3)}


def _summary(results: list[dict]) -> dict[str, Any]:
    rps = [r["requests"] / (r["duration_us"] / 1e6) for r in results]
    errors = sum(sum(r["errors"].values()) for r in results)
    p99 = [r["latency_us"]["p99"] / 1000 for r in results]
    return {"rps": round(statistics.median(rps), 1), "rps_runs": [round(x) for x in rps],
            "p99_ms": round(statistics.median(p99), 2), "errors": errors}  # fmt: skip


def idle_requests(workdir: Path, store: Path, s3: SeaweedS3, seconds: float = 30.0) -> dict:
    os.environ.update(s3.env())
    from serving.runtime.loader import ModelLoader
    from serving.store.s3_store import S3Store
    from serving.telemetry.metrics import Metrics

    remote = S3Store(f"s3://{BUCKET}/bench/models", workdir / "idle-cache")
    seen: Counter[str] = Counter()
    loader = ModelLoader(remote, Metrics(), poll_interval=1.0)
    loader.refresh()
    remote.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: seen.update([model.name])
    )
    loader.ensure_polling()
    time.sleep(seconds)
    loader.stop_polling()
    models = len(remote.list_models())
    per_minute = {op: round(n * 60 / seconds, 1) for op, n in seen.items()}
    return {"models": models, "poll_interval_s": 1.0, "per_minute": per_minute}


def big_forest(workdir: Path, megabytes: int = 100) -> Path:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60_000, 20))
    y = (x[:, 0] + rng.normal(size=60_000) > 0).astype(int)
    trees = 8
    while True:
        forest = RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=2).fit(x, y)
        path = workdir / "forest.joblib"
        joblib.dump(forest, path)
        size = path.stat().st_size / 1e6
        if size >= megabytes * 0.9:
            return path
        trees = int(trees * megabytes / size) + 1


def time_to_ready(workdir: Path, s3: SeaweedS3) -> dict:
    artifact = big_forest(workdir)
    local = workdir / "forest-store"
    env = servers.clean_env({"SERVING_DATA_DIR": str(workdir / "cli")})
    _cli(env, "--store", str(local), "models", "register", "forest", str(artifact), "--activate")
    url = f"s3://{BUCKET}/forest/models"
    _cli({**env, **s3.env()}, "store", "copy", str(local), url)
    cache = workdir / "replica-cache"
    times = {"artifact_mb": round(artifact.stat().st_size / 1e6, 1)}
    for label, store, extra in (
        ("local store", str(local), {}),
        ("S3, cold cache", url, s3.env()),
        ("S3, warm cache", url, s3.env()),
    ):
        server = servers.ours(workdir, Path(store), 1, servers.free_port(), [], name="ready")
        server.env.update(extra, SERVING_MODEL_STORE=store, SERVING_CACHE_DIR=str(cache))
        started = time.monotonic()
        server.start(1, timeout=300)
        times[label] = round(time.monotonic() - started, 2)
        server.stop()
    return times


def main() -> None:
    loadgen.wrk_path()
    with tempfile.TemporaryDirectory(prefix="serving-bench-fleet-") as tmp:
        workdir = Path(tmp)
        store, bodies = fixtures.build(workdir, servers.clean_env())
        s3 = SeaweedS3(workdir / "seaweed")
        s3.start()
        cluster = pg.start_cluster()
        try:
            results = {
                "throughput": throughput(
                    workdir, store, bodies[("native", 1)], s3, cluster.database()
                ),
                "idle": idle_requests(workdir, store, s3),
                "ready": time_to_ready(workdir, s3),
            }
        finally:
            cluster.remove()
            s3.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))


def render(results: dict) -> str:
    t, idle, ready = results["throughput"], results["idle"], results["ready"]
    head = f"LR 1-row, 8 connections, {WORKERS} workers, {t['rounds']} rounds of {t['seconds']} s"
    lines = [head, "| setup | req/s (median) | p99 ms | errors |", "| --- | --- | --- | --- |"]
    for name in ("local-sqlite", "s3-postgresql"):
        row = t[name]
        lines.append(
            f"| {name} | {row['rps']} {row['rps_runs']} | {row['p99_ms']} | {row['errors']} |"
        )
    lines.append(f"ratio S3+PostgreSQL / local: {t['ratio']}")
    lines.append(f"idle S3 requests per worker per minute: {idle['per_minute']}")
    waits = ", ".join(f"{k} {v} s" for k, v in ready.items() if k != "artifact_mb")
    lines.append(f"ready with a {ready['artifact_mb']} MB forest: {waits}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
