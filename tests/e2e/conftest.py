"""End-to-end fixtures: real gunicorn servers on 127.0.0.1, stores built by the CLI, real StatsD.

Nothing here imports `serving`: the server and the CLI run as subprocesses, the tests talk HTTP
and UDP to them and read their files and stdout, as an operator or a client would.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GUNICORN_CONF = REPO / "gunicorn.conf.py"
POLL_INTERVAL = 0.2
# A promote must reach every worker within 2 poll intervals; the margin covers the load itself.
SWAP_DEADLINE = 2 * POLL_INTERVAL + 0.5
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
_WORKER_READY = re.compile(r"worker (\d+) ready$")
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+) \((\d+)\)")
# Variables of the parent environment that would change how the server under test behaves.
_OWN_VARS = ("HOST", "PORT", "WEB_CONCURRENCY")
_OWN_PREFIXES = ("SERVING_", "GUNICORN_")


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the command line ------------------------------------------------------------------------


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _OWN_VARS and not key.startswith(_OWN_PREFIXES)
    }
    env.update(extra or {})
    return env


def start_cli(store: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m serving --store STORE ARGS...` started, not waited for (see `finish_cli`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--store", str(store), *args],
        cwd=REPO,
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_cli(proc: subprocess.Popen) -> str:
    """Wait (bounded) for a CLI process; its stdout, or a failed test."""
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"`{' '.join(proc.args)}` did not finish in {CLI_TIMEOUT}s")
    assert proc.returncode == 0, (
        f"`{' '.join(proc.args)}` exited {proc.returncode}\nstdout: {stdout}\nstderr: {stderr}"
    )
    return stdout


def reap(proc: subprocess.Popen) -> None:
    """Kill and wait for a CLI process that `finish_cli` did not (a test failed first)."""
    if proc.returncode is None:
        proc.kill()
        proc.communicate(timeout=CLI_TIMEOUT)


def run_cli(store: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`python -m serving --store STORE ARGS...` in a subprocess; its stdout, or a failed test."""
    return finish_cli(start_cli(store, *args, env=env))


def deployment_changed_at(store: Path, name: str) -> float:
    """Wall-clock time of the last write of a model's deployment.json (what workers poll)."""
    return (store / name / "deployment.json").stat().st_mtime


# -- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when the body is not JSON
    raw: bytes


def http_request(
    port: int,
    method: str,
    path: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    chunks: Iterable[bytes] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request on a new connection (sync workers close it after each response anyway)."""
    all_headers = dict(headers or {})
    body: bytes | Iterable[bytes] | None = None
    if payload is not None:
        body = json.dumps(payload).encode()
        all_headers.setdefault("Content-Type", "application/json")
    if chunks is not None:
        body = chunks
        all_headers["Transfer-Encoding"] = "chunked"
        all_headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            method, path, body=body, headers=all_headers, encode_chunked=chunks is not None
        )
        response = conn.getresponse()
        raw = response.read()
        response.close()
    finally:
        conn.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, parsed, raw)


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send `data` as is on a new connection (for requests http.client refuses to send) and
    read the reply to EOF; the server must close the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return Reply(
        int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, parsed, body
    )


def predict(port: int, rows: list[list[float]], name: str = "iris", **kwargs: Any) -> Reply:
    return http_request(port, "POST", f"/v1/models/{name}/predict", {"instances": rows}, **kwargs)


def survey_workers(
    port: int, workers: int = 2, name: str = "iris", tries: int = 400, strict: bool = True
) -> dict[int, dict]:
    """GET /v1/models/NAME until every worker answered; {pid: its last answer}.

    Which sync worker accepts a new connection is up to the kernel, so a few hundred tries
    see every one of a handful of workers; fail if they do not (or, not strict, return what
    was seen).
    """
    seen: dict[int, dict] = {}
    for _ in range(tries):
        reply = http_request(port, "GET", f"/v1/models/{name}")
        assert reply.status == 200, reply.raw
        seen[reply.body["worker"]["pid"]] = reply.body
        if len(seen) >= workers:
            return seen
    if strict:
        pytest.fail(f"saw only workers {sorted(seen)} in {tries} requests, expected {workers}")
    return seen


def wait_for_workers(port: int, workers: int = 2, timeout: float = 30.0) -> set[int]:
    """The pids of `workers` workers, once all answer: ready means one worker answers, and the
    others may still be loading their models (seconds on a busy machine)."""

    def seen() -> set[int] | None:
        pids = set(survey_workers(port, workers, tries=50, strict=False))
        return pids if len(pids) >= workers else None

    return wait_until(seen, timeout, f"{workers} workers to answer", step=0.1)  # type: ignore[no-any-return]


def wait_for_replacement(port: int, victim: int, workers: int = 2) -> dict[int, dict]:
    """After killing worker `victim`: wait (bounded) until `workers` others answer."""

    def replaced() -> dict[int, dict] | None:
        seen = survey_workers(port, workers, tries=50, strict=False)
        return seen if len(seen) == workers and victim not in seen else None

    return wait_until(replaced, 20, f"gunicorn to replace worker {victim}", step=0.2)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def sleep_until(wall_clock: float) -> None:
    time.sleep(max(0.0, wall_clock - time.time()))


# -- StatsD ------------------------------------------------------------------------------------


class StatsdListener:
    """A UDP socket on 127.0.0.1 that keeps every datagram the server sends it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._packets: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self._packets.append(data.decode("ascii", "replace"))

    def packets(self) -> list[str]:
        return list(self._packets)

    def metrics(self) -> list[str]:
        """Every metric line received (a packet may hold several, newline-separated)."""
        return [line for packet in self.packets() for line in packet.split("\n") if line]

    def clear(self) -> None:
        self._packets.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


# -- gunicorn ----------------------------------------------------------------------------------


class GunicornServer:
    """`python -m gunicorn -c gunicorn.conf.py` on an ephemeral port, stdout read into `lines`."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self.lines: list[str] = []  # stdout, one JSON log line each
        self.errors: list[str] = []  # stderr
        self.port = 0
        self.master_pid = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []

    # lifecycle

    def start(self) -> GunicornServer:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)],
            cwd=REPO,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for stream, sink in ((self._proc.stdout, self.lines), (self._proc.stderr, self.errors)):
            reader = threading.Thread(target=_pump, args=(stream, sink), daemon=True)
            reader.start()
            self._readers.append(reader)
        self.port, self.master_pid = wait_until(self._listening, STARTUP_TIMEOUT, "Listening at")
        wait_until(self._ready, STARTUP_TIMEOUT, "GET /health/ready = 200", step=0.1)
        # Ready means one worker answers; the others may still be loading their models, and
        # until they accept, the first takes every connection. Wait for all of them.
        workers = int(self._env.get("WEB_CONCURRENCY", "1"))
        wait_until(lambda: len(self.ready_workers()) >= workers, STARTUP_TIMEOUT, "all workers")
        return self

    def ready_workers(self) -> set[int]:
        """Pids of the workers that logged "worker <pid> ready" (models loaded, accepting)."""
        self._assert_running()
        return {
            int(match.group(1))
            for record in self.records()
            if record.get("logger") == "gunicorn.error"
            and (match := _WORKER_READY.match(str(record.get("message", ""))))
        }

    def _listening(self) -> tuple[int, int] | None:
        self._assert_running()
        for record in self.records():
            match = _LISTENING.search(str(record.get("message", "")))
            if record.get("logger") == "gunicorn.error" and match:
                return int(match.group(1)), int(match.group(2))
        return None

    def _ready(self) -> bool:
        self._assert_running()
        with contextlib.suppress(OSError):
            return http_request(self.port, "GET", "/health/ready", timeout=2).status == 200
        return False

    def _assert_running(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {self._proc.returncode}\n{self.output()}")

    def signal(self, signum: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        """SIGTERM, a bounded wait, SIGKILL if needed; idempotent. The exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=STOP_TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
        return self._proc.returncode

    # what it said

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        """stdout lines (from line number `since` on) that parse as JSON objects."""
        out = []
        for line in self.lines[since:]:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def wait_for_record(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 5.0
    ) -> dict[str, Any]:
        return wait_until(
            lambda: next((r for r in self.records() if predicate(r)), None), timeout, what
        )

    def served_by(self, model: str, workers: set[int], timeout: float = 5.0) -> set[int]:
        """The pids whose request lines name `model`, once they are `workers` (request lines
        are written every FLUSH_EVERY seconds); fails the test after `timeout`."""

        def pids() -> set[int]:
            return {
                r["process"]
                for r in self.records()
                if r.get("logger") == "serving.request" and r.get("model") == model
            }

        wait_until(lambda: pids() == workers, timeout, f"request lines of {sorted(workers)}")
        return pids()

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.lines[-60:], "--- stderr", *self.errors[-60:]])


def _pump(stream: Any, sink: list[str]) -> None:
    """Read a pipe to EOF so it never fills and blocks the server."""
    with contextlib.suppress(ValueError, OSError):  # closed under us by a stop() that gave up
        for raw in iter(stream.readline, b""):
            sink.append(raw.decode("utf-8", "replace").rstrip("\n"))


def server_env(
    store: Path, statsd_port: int, workers: int = 2, extra: dict[str, str] | None = None
) -> dict[str, str]:
    return clean_env(
        {
            "HOST": "127.0.0.1",
            "PORT": "0",
            "WEB_CONCURRENCY": str(workers),
            "SERVING_MODEL_STORE": str(store),
            "SERVING_DATA_DIR": str(store.parent / "data"),
            "SERVING_POLL_INTERVAL": str(POLL_INTERVAL),
            "SERVING_STATSD_HOST": "127.0.0.1",
            "SERVING_STATSD_PORT": str(statsd_port),
            "SERVING_STATSD_PREFIX": "test",
            # No drain on SIGTERM (5 s each stop): test_drain_live turns it on.
            "SERVING_DRAIN_SECONDS": "0",
            **(extra or {}),
        }
    )


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def iris_v2_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second iris classifier (heavily regularised), saved with joblib like a user would."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    bunch = load_iris(as_frame=True)
    target = bunch.target.map(dict(enumerate(bunch.target_names)))
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(C=0.01))])
    model.fit(bunch.data, target)
    path = tmp_path_factory.mktemp("artifacts") / "iris_v2.joblib"
    joblib.dump(model, path)
    return path


@pytest.fixture(scope="session")
def template_store(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """`serving demo` (iris 1 and diabetes 1 in production), then iris 2 and 3, not promoted.

    Versions 2 and 3 are the same artifact (tests may corrupt 3 in their copy). Built once;
    every server gets its own copy (`copy_store`) so their promotes do not mix.
    """
    store = tmp_path_factory.mktemp("template") / "store"
    demo = start_cli(store, "demo")
    try:
        artifact = request.getfixturevalue("iris_v2_artifact")  # trains while the demo does
    finally:
        finish_cli(demo)
    registers = [start_cli(store, "models", "register", "iris", str(artifact)) for _ in "ab"]
    try:
        assert sorted(finish_cli(proc).strip() for proc in registers) == ["2", "3"]
    finally:
        for proc in registers:
            reap(proc)
    return store


@pytest.fixture(scope="session")
def copy_store(
    template_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], Path]:
    def copy() -> Path:
        target = tmp_path_factory.mktemp("store") / "store"
        shutil.copytree(template_store, target)
        return target

    return copy


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., GunicornServer]]:
    """Factory: start a gunicorn server (ready) from an env; whatever is left is stopped at exit."""
    started: list[GunicornServer] = []

    def start(env: dict[str, str]) -> GunicornServer:
        server = GunicornServer(env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@contextlib.contextmanager
def statsd_listener() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def s3_template(s3_url: str, template_store: Path, cli_env: dict[str, str]) -> str:
    """The e2e template store (demo models, iris 1-3) copied into a fresh bucket prefix."""
    run_cli(template_store, "store", "copy", str(template_store), s3_url, env=cli_env)
    return s3_url


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The command line as an operator's machine: its own data dir (and download cache)."""
    return {"SERVING_DATA_DIR": str(tmp_path / "operator")}
