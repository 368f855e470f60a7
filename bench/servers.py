"""The servers under test, each a gunicorn master we start, watch through /proc and stop.
(The peers, MLServer and MLflow, are in bench/peers.py.)

- ours: `gunicorn -c gunicorn.conf.py` as `make run` starts it (plus optional command-line
  overrides such as `-k gthread --threads 4`), every feature at its default: validation, StatsD
  to the bench's sink on StatsD's default port (another port only where 8125 is taken), JSON
  request logs to a file, the prediction log (SQLite) in the temp dir. Only the store, the data
  directory, the port and SERVING_DRAIN_SECONDS=0 (for a quick stop) differ from `make run`.
- flask-floor: `bench/flask_floor_app.py`, Flask parsing the JSON and answering a constant.
- bare: `bench/bare_app.py` on gunicorn with the same number of sync workers (the ceiling).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.protocols import NATIVE, Protocol
from bench.statsd_sink import DEFAULT_PORT as DEFAULT_STATSD_PORT

ROOT = Path(__file__).resolve().parent.parent
_OWN_VARS = ("HOST", "PORT", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
_OWN_PREFIXES = ("SERVING_", "GUNICORN_")
_ISSUED_PORTS: set[int] = set()  # by free_port, in this run


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without variables that would change the servers under test.

    Processes run in the temp dir with the repo on PYTHONPATH, so anything they write to a
    path relative to their working directory (./data, the prediction log) stays out of the repo.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _OWN_VARS and not key.startswith(_OWN_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def free_port() -> int:
    """A port nobody listens on now, never the same twice in a run: servers are described (and
    their ports chosen) before any of them binds, and the kernel may hand a closed port out again.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _ISSUED_PORTS:
            _ISSUED_PORTS.add(port)
            return port


class Server:
    """One gunicorn master: start (wait for a 200 on `ready_path`), workers, stop."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], workdir: Path, port: int = 0
    ):
        """`command`: gunicorn's arguments; it runs as `python -m gunicorn ...` in `workdir`,
        on `port` (default: $PORT of `env`)."""
        self.name, self.command, self.env, self.cwd = name, command, env, workdir
        self.argv = [sys.executable, "-m", "gunicorn", *command]
        self.log = workdir / f"{name}.log"
        self.port = port or int(env["PORT"])
        self.ready_path = "/"
        self.protocol: Protocol = NATIVE
        self.contestant = name  # the column it is reported under (one per server program)
        self.proc: subprocess.Popen[bytes] | None = None
        self.idle_memory: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, workers: int, timeout: float = 90.0) -> Server:
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self._up(workers):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name} did not start; see its log:\n{self.log_tail()}")
            time.sleep(0.2)
        self.idle_memory = self.memory()
        return self

    def spawn(self, **popen: Any) -> None:
        """Start the command, its output appended to `self.log`; `popen`: more Popen options."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **popen,
            )

    def _up(self, workers: int) -> bool:
        return self._ready() and len(self.workers()) == workers

    def _ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", self.ready_path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def workers(self) -> list[int]:
        return procstat.children(self.pid)

    def worker_rss(self) -> list[float | None]:
        return [procstat.rss_mib(pid) for pid in self.workers()]

    def memory(self) -> dict[str, Any]:
        """VmRSS and PSS (MiB) of each worker, and of the whole tree with the master."""
        pids = self.workers()
        rss = [procstat.rss_mib(pid) or 0.0 for pid in pids]
        pss = [procstat.pss_mib(pid) or 0.0 for pid in pids]
        master_rss, master_pss = (
            procstat.rss_mib(self.pid) or 0.0,
            procstat.pss_mib(self.pid) or 0.0,
        )
        return {
            "worker_rss_mib": rss,
            "worker_pss_mib": pss,
            "master_rss_mib": master_rss,
            "total_rss_mib": round(master_rss + sum(rss), 1),
            "total_pss_mib": round(master_pss + sum(pss), 1),
        }

    def log_size(self) -> int:
        return self.log.stat().st_size

    def request_durations(self, offset: int) -> list[float]:
        """`duration_ms` of the request log lines written after byte `offset` of the log."""
        out = []
        with self.log.open("rb") as log:
            log.seek(offset)
            for line in log:
                if b'"serving.request"' in line:
                    try:
                        out.append(float(json.loads(line)["duration_ms"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut at the offset
        return out

    def finish(self) -> dict[str, dict[str, Any]]:
        """Memory after the load, then stop; {name: what was seen of this server}."""
        command = " ".join(["gunicorn", *self.command]).replace(str(ROOT) + os.sep, "")
        info = {"command": command, "idle": self.idle_memory, "after_load": self.memory()}
        self.stop()
        if self.ready_path != "/":
            info["request_log_lines"] = request_log_lines(self)
            info["prediction_log_rows"] = prediction_log_rows(Path(self.env["SERVING_DATA_DIR"]))
        return {self.name: info}

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after 40 s; only the master this object started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def ours(
    workdir: Path,
    store: Path,
    workers: int,
    statsd_port: int,
    overrides: list[str],
    name: str | None = None,
    settings: dict[str, str] | None = None,
) -> Server:
    """Our server from gunicorn.conf.py, all features on; `overrides` go after `-c`;
    `settings`: environment variables on top (bench/feature_cost.py turns features off)."""
    kind = "gthread" if "gthread" in overrides else "run"  # run: gunicorn.conf.py's default
    name = name or f"serving-{kind}"
    env = clean_env(
        {
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "WEB_CONCURRENCY": str(workers),
            "SERVING_MODEL_STORE": str(store),
            "SERVING_DATA_DIR": str(workdir / f"data-{name}"),
            "SERVING_DRAIN_SECONDS": "0",  # a benchmark's stop need not wait for load balancers
        }
    )
    if statsd_port != DEFAULT_STATSD_PORT:  # else StatsD's default, as `make run` sends it
        env["SERVING_STATSD_PORT"] = str(statsd_port)
    env.update(settings or {})
    command = ["-c", str(ROOT / "gunicorn.conf.py"), *overrides]
    server = Server(name, command, env, workdir)
    server.ready_path = "/health/ready"
    return server


def naive(workdir: Path, store: Path, workers: int, model: str) -> Server:
    """bench/naive_app.py (json -> numpy -> predict -> jsonify) on gunicorn's sync workers,
    serving `model`'s version 1 from the bench store; one server per model."""
    port = free_port()
    command = ["--workers", str(workers), "--worker-class", "sync", "--bind", f"127.0.0.1:{port}"]
    command += ["--worker-tmp-dir", "/dev/shm", "bench.naive_app:app"]
    artifact = store / model / "1" / "model.joblib"
    env = clean_env({"PORT": str(port), "NAIVE_MODEL": str(artifact), "OMP_NUM_THREADS": "1"})
    server = Server(f"naive-{model}", command, env, workdir)
    server.contestant = "naive-flask"
    return server


def flask_floor(workdir: Path, workers: int) -> Server:
    """bench/flask_floor_app.py (Flask: parse the JSON body, jsonify a constant) on gunicorn's
    sync workers: what a Flask server pays before any work of its own."""
    port = free_port()
    command = ["--workers", str(workers), "--worker-class", "sync", "--bind", f"127.0.0.1:{port}"]
    command += ["--worker-tmp-dir", "/dev/shm", "bench.flask_floor_app:app"]
    return Server("flask-floor", command, clean_env({"PORT": str(port)}), workdir)


def bare(workdir: Path, workers: int) -> Server:
    """bench/bare_app.py with gunicorn's defaults (no ./gunicorn.conf.py in the temp dir)."""
    port = free_port()
    command = ["--workers", str(workers), "--worker-class", "sync", "--bind", f"127.0.0.1:{port}"]
    command += ["--worker-tmp-dir", "/dev/shm", "bench.bare_app:app"]
    return Server("bare-wsgi", command, clean_env({"PORT": str(port)}), workdir)


def request_log_lines(server: Server) -> int:
    """How many per-request JSON log lines the server wrote (proof logs were on)."""
    with server.log.open("rb") as lines:
        return sum(1 for line in lines if b'"serving.request"' in line)


def prediction_log_rows(data_dir: Path) -> int | None:
    """Rows the server wrote to its prediction log (SQLite under SERVING_DATA_DIR), if any."""
    total = None
    for db in data_dir.glob("*.db"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                total = (total or 0) + conn.execute("SELECT count(*) FROM predictions").fetchone()[
                    0
                ]
        except sqlite3.Error:
            continue
    return total
