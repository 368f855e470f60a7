"""wrk on loopback: one run at a fixed concurrency for a fixed time; results as a dict.

wrk keeps connections alive; gunicorn's sync workers close each one after the response, so
against them every request pays a TCP connect (wrk reconnects; its latency excludes the connect).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("post.lua")
MAX_THREADS = 2  # the machine has 2 cores; more wrk threads only add contention
_MARKER = "BENCH_RESULT "


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk not found: `make bench` installs it (apt-get install -y wrk)")
    return path


def run(url: str, body: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run; adds `wrk_cpu_s`, the CPU wrk itself used (it shares the cores)."""
    threads = min(MAX_THREADS, connections)
    argv = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(SCRIPT), url, "--", str(body)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARKER)), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(line[len(_MARKER) :])
    result["threads"], result["connections"] = threads, connections
    result["wrk_cpu_s"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3
    )
    return result
