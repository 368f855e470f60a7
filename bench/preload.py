"""What gunicorn's `preload_app` buys and costs, in memory, with hot swap: `make bench-memory`.

For each of preload off (the shipped default) and on (`GUNICORN_PRELOAD=1`), and 2 and 4
workers: start our server on the benchmark's store, send each worker traffic, read every
process's RSS and PSS (PSS shares a page among the processes that map it, so the tree's PSS is
what the machine really spends), then register and promote a new version of `lr` (a hot swap in
every worker) and read them again. Next to it, the naive Flask app (bench/naive_app.py) with the
same workers: the goal is no more memory per worker than it plus 20%.

    python -m bench.preload [--workers 2,4] [--out bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import fixtures, servers

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = Path(tmp)
        env = servers.clean_env()
        store, bodies = fixtures.build(workdir, env)
        body = bodies[("native", 1)].read_bytes()
        artifact = workdir / "lr.joblib"
        for workers in counts:
            rows.append(_naive(workdir, store, workers, body))
            for preload in (False, True):
                rows.append(_ours(workdir, store, workers, preload, body, artifact, env))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    _print(rows)


def _ours(
    workdir: Path,
    store: Path,
    workers: int,
    preload: bool,
    body: bytes,
    artifact: Path,
    env: dict[str, str],
) -> dict[str, Any]:
    server = servers.ours(workdir, store, workers, servers.free_port(), [])
    server.name = f"ours-{'preload' if preload else 'fork'}-{workers}"
    server.env = {**server.env, "GUNICORN_PRELOAD": "1" if preload else "0"}
    server.start(workers)
    try:
        _traffic(server, "lr", body, workers)
        before = server.memory()
        old = _version(server, body)
        argv = [sys.executable, "-m", "serving", "--store", str(store)]
        subprocess.run(
            [*argv, "models", "register", "lr", str(artifact), "--activate"],
            cwd=workdir,
            env=env,
            capture_output=True,
            check=True,
        )
        _wait_swapped(server, body, workers, old)
        after = server.memory()
        version = _version(server, body)
    finally:
        server.stop()
    return {
        "server": "ours",
        "preload": preload,
        "workers": workers,
        "before_swap": before,
        "after_swap": after,
        "version_before": old,
        "version_after": version,
    }


def _naive(workdir: Path, store: Path, workers: int, body: bytes) -> dict[str, Any]:
    port = servers.free_port()
    command = ["--workers", str(workers), "--bind", f"127.0.0.1:{port}", "bench.naive_app:app"]
    env = servers.clean_env(
        {"PORT": str(port), "NAIVE_MODEL": str(store / "lr" / "1" / "model.joblib")}
    )
    server = servers.Server(f"naive-{workers}", command, env, workdir)
    server.start(workers)
    try:
        _traffic(server, "lr", body, workers)
        memory = server.memory()
    finally:
        server.stop()
    return {"server": "naive", "preload": False, "workers": workers, "before_swap": memory}


def _post(server: servers.Server, body: bytes, path: str = "/v1/models/lr/predict") -> bytes:
    request = urllib.request.Request(
        server.url(path), data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def _traffic(server: servers.Server, model: str, body: bytes, workers: int) -> None:
    for _ in range(200 * workers):  # every worker answers (the kernel accepts in turn)
        _post(server, body)


def _version(server: servers.Server, body: bytes) -> int:
    return int(json.loads(_post(server, body))["version"])


def _wait_swapped(server: servers.Server, body: bytes, workers: int, old: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(_version(server, body) > old for _ in range(20 * workers)):
            _traffic(server, "lr", body, workers)
            return
        time.sleep(0.2)
    raise SystemExit("the promote was not seen by every worker within 30 s")


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        "| server | workers | worker RSS MiB (mean) | tree RSS MiB | tree PSS MiB "
        "| after hot swap: tree RSS | tree PSS |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        before, after = row["before_swap"], row.get("after_swap")
        name = (
            row["server"]
            if row["server"] == "naive"
            else (f"ours, preload_app {'on' if row['preload'] else 'off'}")
        )
        mean = sum(before["worker_rss_mib"]) / max(len(before["worker_rss_mib"]), 1)
        cells = [
            name,
            str(row["workers"]),
            f"{mean:.0f}",
            f"{before['total_rss_mib']:.0f}",
            f"{before['total_pss_mib']:.0f}",
            f"{after['total_rss_mib']:.0f}" if after else "—",
            f"{after['total_pss_mib']:.0f}" if after else "—",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
