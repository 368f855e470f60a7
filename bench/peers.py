"""The peers of `make bench-peers`: MLServer and MLflow's `models serve`, each from its own venv.

`make bench-peers` installs each peer from bench/requirements-<peer>.txt into
`.bench-venvs/<peer>` (never into ours) and touches `.bench-venvs/<peer>/.installed` when pip
succeeded; the install log is `.bench-venvs/<peer>.install.log`. Here, for each installed peer:
export the benchmark's models with the peer's own Python (bench/peer_models.py), describe its
server(s), started in their own process group so the whole tree (CLI, uvicorn, workers) is
measured and stopped together.

- mlserver: `mlserver start DIR`, both models in one server, `parallel_workers` = N inference
  processes behind one uvicorn front process; adaptive batching off (the default); everything
  else as shipped (access log on, Prometheus metrics on their own port, gRPC on another).
- mlflow: `mlflow models serve -m DIR --env-manager local -w N`, one server per model (MLflow
  serves one model per server): uvicorn with N workers, under the `mlflow` CLI process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import fixtures, procstat, protocols, servers
from bench.servers import ROOT, Server

VENVS = ROOT / ".bench-venvs"
_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class PeerError(Exception):
    """A peer that cannot take part: not installed, or its models could not be exported."""


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]  # the distributions whose versions the results record

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    def bin(self, program: str) -> str:
        return str(self.venv / "bin" / program)

    def check_installed(self) -> None:
        if not (self.venv / ".installed").exists():
            log = VENVS / f"{self.name}.install.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            lines = [ln for ln in tail if not ln.startswith("WARNING: Location")]
            reason = " | ".join(lines) or "no install log: run `make bench-peers`"
            raise PeerError(f"not installed ({reason})")

    def versions(self) -> dict[str, str]:
        code = (
            "import json, importlib.metadata as m, platform; "
            f"print(json.dumps({{p: m.version(p) for p in {list(self.packages)!r}}} "
            "| {'python': platform.python_version()}))"
        )
        done = subprocess.run([self.bin("python"), "-c", code], capture_output=True, text=True)
        return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}

    def export(self, out: Path) -> Path:
        """The benchmark's models fitted and saved by the peer's own Python into `out`."""
        argv = [self.bin("python"), "-m", "bench.peer_models", self.name, str(out)]
        env = peer_env(self, {"PYTHONPATH": str(ROOT)})
        done = subprocess.run(argv, cwd=out.parent, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerError(f"model export failed: {done.stderr.strip().splitlines()[-1:]}")
        return out


MLSERVER = Peer("mlserver", ("mlserver", "mlserver-sklearn", "scikit-learn", "numpy", "uvicorn"))
MLFLOW = Peer("mlflow", ("mlflow", "scikit-learn", "numpy", "pandas", "uvicorn", "fastapi"))
PEERS = (MLSERVER, MLFLOW)


def peer_env(peer: Peer, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our clean environment with the peer's venv first on PATH (MLflow execs `uvicorn`) and
    BLAS/OpenMP pinned to one thread per process, as ours is."""
    env = servers.clean_env()
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(peer.venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(peer.venv)
    return {**env, **_THREADS, **(extra or {})}


class PeerServer(Server):
    """A peer's server: any command, its own process group, every process of its tree counted."""

    def __init__(self, peer: Peer, name: str, argv: list[str], port: int, workdir: Path):
        super().__init__(name, argv, peer_env(peer), workdir, port)
        self.argv, self.contestant = argv, peer.name
        self.config: dict[str, Any] = {}

    def start(self, workers: int, timeout: float = 120.0) -> Server:
        self.spawn(start_new_session=True)  # one process group: stopped as a whole
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name} did not start; its log ends:\n{self.log_tail()}")
            time.sleep(0.3)
        self._settle(deadline)
        if self.proc.poll() is not None:  # another process answered on its port
            self.stop()
            raise SystemExit(f"{self.name} exited; its log ends:\n{self.log_tail()}")
        self.idle_memory = self.memory()
        return self

    def _settle(self, deadline: float, window: float = 0.5) -> None:
        """Ready answers as soon as one process is: wait until the tree stops growing and idles
        (workers still loading models burn CPU)."""
        seen, cpu = len(self.workers()), procstat.tree_cpu_seconds(self.pid)
        while time.monotonic() < deadline:
            time.sleep(window)
            now, used = len(self.workers()), procstat.tree_cpu_seconds(self.pid)
            if now == seen and (used - cpu) / window < 0.05:
                return
            seen, cpu = now, used

    def workers(self) -> list[int]:
        return procstat.descendants(self.pid)

    def memory(self) -> dict[str, Any]:
        """VmRSS and PSS (MiB) of every process of the tree (CLI, front process, workers...)."""
        pids = [self.pid, *self.workers()]
        rss = [procstat.rss_mib(pid) or 0.0 for pid in pids]
        pss = [procstat.pss_mib(pid) or 0.0 for pid in pids]
        return {
            "processes": len(pids),
            "worker_rss_mib": rss[1:],
            "worker_pss_mib": pss[1:],
            "master_rss_mib": rss[0],
            "total_rss_mib": round(sum(rss), 1),
            "total_pss_mib": round(sum(pss), 1),
        }

    def finish(self) -> dict[str, dict[str, Any]]:
        info = {
            "command": " ".join(self.argv)
            .replace(str(self.cwd), "$TMPDIR")
            .replace(str(ROOT) + os.sep, ""),
            "config": self.config,
            "idle": self.idle_memory,
            "after_load": self.memory(),
        }
        self.stop()
        return {self.name: info}

    def stop(self) -> None:
        """SIGTERM to the process group we started, SIGKILL after 30 s; then any straggler."""
        if self.proc is None:
            return
        group = self.proc.pid
        if self.proc.poll() is None:
            _signal_group(group, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(group, signal.SIGKILL)
                self.proc.wait(timeout=10)
        _signal_group(group, signal.SIGKILL)  # workers the CLI left behind, if any


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def mlserver_servers(workdir: Path, workers: int) -> dict[str, PeerServer]:
    """One MLServer for both models: {model: server}."""
    repo = MLSERVER.export(workdir / "mlserver-models")
    port = servers.free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": servers.free_port(),
        "metrics_port": servers.free_port(),
        "parallel_workers": workers,
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    argv = [MLSERVER.bin("mlserver"), "start", str(repo)]
    server = PeerServer(MLSERVER, "mlserver", argv, port, workdir)
    server.ready_path, server.protocol = "/v2/health/ready", protocols.V2
    server.config = {"settings.json": settings, "adaptive_batching": "off (max_batch_size unset)"}
    return dict.fromkeys(fixtures.MODELS, server)


def mlflow_servers(workdir: Path, workers: int) -> dict[str, dict[str, PeerServer]]:
    """One `mlflow models serve` per model: {contestant: {model: server}}.

    With N workers (per-core comparable with ours) and, as "mlflow-1w", with one: on uvicorn's
    multi-process mode, each request on a kept-alive connection waited ~50 ms for the event
    loop (see docs/performance.md), which a single worker does not."""
    models = MLFLOW.export(workdir / "mlflow-models")
    labels = {"mlflow": workers} | ({"mlflow-1w": 1} if workers != 1 else {})
    out: dict[str, dict[str, PeerServer]] = {}
    for label, count in labels.items():
        out[label] = {}
        for model in fixtures.MODELS:
            port = servers.free_port()
            argv = [MLFLOW.bin("mlflow"), "models", "serve", "-m", str(models / model)]
            argv += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
            argv += ["-w", str(count)]
            server = PeerServer(MLFLOW, f"{label}-{model}", argv, port, workdir)
            server.ready_path, server.protocol = "/ping", protocols.MLFLOW
            server.contestant = label
            server.config = {"workers": count, "server": "uvicorn (mlflow models serve)"}
            out[label][model] = server
    return out


def prepare(peer: Peer, workdir: Path, workers: int) -> dict[str, dict[str, PeerServer]]:
    """The peer's contestants, {label: {model: server}}, servers not started yet; PeerError if
    it cannot take part."""
    peer.check_installed()
    if peer is MLSERVER:
        return {"mlserver": mlserver_servers(workdir, workers)}
    return mlflow_servers(workdir, workers)


if __name__ == "__main__":  # `python -m bench.peers`: which peers are installed, and versions
    for peer in PEERS:
        try:
            peer.check_installed()
            print(peer.name, peer.versions())
        except PeerError as exc:
            print(peer.name, exc, file=sys.stderr)
