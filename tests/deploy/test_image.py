"""The image built and run with podman: ready in time, serving, uid 10001, read-only, SIGTERM.

Runs with SERVING_TEST_IMAGE=1, which `make test` sets for it alone after the other tests: a
cold run makes a bookworm base with debootstrap and installs every pin into the image, minutes
of both cores that would slow the timing-bound tests if it ran beside them.
tests/deploy/podman.py says what podman needs on a machine like CI's.
One test, one container, steps in order: the stop must come last, and under pytest-xdist
separate tests could each build the image on their own worker.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.deploy import podman as pm
from tests.e2e.conftest import IRIS_ROW, http_request, predict, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DOCKERFILE = (pm.REPO / "Dockerfile").read_text()


def dockerfile_number(pattern: str) -> int:
    found = re.search(pattern, DOCKERFILE, re.M)
    assert found, f"{pattern!r} not in the Dockerfile"
    return int(found.group(1))


START_PERIOD = dockerfile_number(r"--start-period=(\d+)s")
APP_UID = dockerfile_number(r"^USER (\d+):")
# `podman stop -t`: above gunicorn's 30 s graceful timeout, as docs/deployment.md says.
STOP_GRACE = 35
# What the app may write with a read-only root: the two volumes, /tmp (the CLI, skops
# conversion) and /dev/shm (gunicorn's heartbeat, Prometheus's files).
WRITABLE = ("/models", "/data", "/tmp", "/dev/shm")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.environ.get("SERVING_TEST_IMAGE") != "1":
        pytest.skip("runs alone after the others: SERVING_TEST_IMAGE=1 (make test sets it)")
    try:
        pm.check_available()
        base = pm.ensure_base(tmp_path_factory.mktemp("base"))
    except pm.Unavailable as reason:
        pytest.skip(str(reason))
    wheels = pm.download_wheels(tmp_path_factory.mktemp("wheels"))
    return pm.build_image(base, wheels, tmp_path_factory.mktemp("build") / "build.log")


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, int]]:
    """The image run as an operator would, read-only with tmpfs for /tmp; (name, host port)."""
    name, port = f"serving-test-{uuid.uuid4().hex[:8]}", unused_port()
    pm.podman(
        "run",
        *pm.runtime_flags(),
        "--detach",
        f"--name={name}",
        *pm.ULIMITS,
        "--read-only",
        "--read-only-tmpfs=false",  # podman's extra tmpfs mounts: off, as in Docker and k8s
        "--tmpfs=/tmp:rw,size=64m",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--publish=127.0.0.1:{port}:8000",
        "--env=WEB_CONCURRENCY=2",
        image,
    )
    try:
        yield name, port
    finally:
        pm.podman("rm", "--force", "--volumes", "--time=0", name, check=False)


def exec_in(name: str, *command: str) -> subprocess.CompletedProcess:
    return pm.podman("exec", name, *command, check=False, timeout=120)


def ready(port: int) -> bool:
    try:
        return http_request(port, "GET", "/health/ready", timeout=2).status == 200
    except OSError:
        return False


def test_image_serves_read_only_as_its_uid_and_stops_cleanly_on_sigterm(
    container: tuple[str, int],
) -> None:
    name, port = container
    started = time.monotonic()
    wait_until(lambda: ready(port), START_PERIOD, "/health/ready within the start period", 0.2)
    print(f"ready {time.monotonic() - started:.1f} s after `podman run`")
    assert exec_in(name, "true").returncode == 0
    assert pm.podman("healthcheck", "run", name, check=False).returncode == 0, "HEALTHCHECK"

    # uid: of `podman exec` and of PID 1, the gunicorn master.
    assert exec_in(name, "id", "-u").stdout.strip() == str(APP_UID)
    status = exec_in(name, "cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{APP_UID}\s+{APP_UID}\s+{APP_UID}\s+{APP_UID}$", status, re.M)

    # Read-only: the code and the rest of the root are not writable, the listed places are.
    for path in ("/app/probe", "/opt/venv/probe", "/probe"):
        touched = exec_in(name, "touch", path)
        assert touched.returncode != 0 and "Read-only file system" in touched.stderr, path
    for directory in WRITABLE:
        probe = f"{directory}/.probe"  # removed again: the store must stay empty for `demo`
        assert exec_in(name, "sh", "-c", f"touch {probe} && rm {probe}").returncode == 0, directory

    # A prediction from the demo store the image's own CLI trains into the /models volume.
    assert exec_in(name, "printenv", "SERVING_MODEL_STORE").stdout.strip() == "/models"
    demo = exec_in(name, "python", "-m", "serving", "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr

    def served() -> object:
        reply = predict(port, [IRIS_ROW])
        return reply if reply.status == 200 else None

    reply = wait_until(served, 30, "the demo iris model to serve", 0.2)
    assert reply.body["predictions"] == ["setosa"] and reply.headers["x-model-version"] == "1"

    # Exposed directly: 50 stalled connections (partial headers, then declared bodies that
    # never arrive) leave predictions answered, p99 within 2x the calm run's.
    calm = _p99(port)
    for prefix in (STALLED_HEADERS, STALLED_BODY):
        stalled = [_stall(port, prefix) for _ in range(STALLED)]
        try:
            attacked = _p99(port)
        finally:
            for sock in stalled:
                sock.close()
        print(f"p99 {attacked * 1000:.1f} ms with 50 stalled, {calm * 1000:.1f} ms calm")
        assert attacked <= 2 * max(calm, 0.025), (prefix, calm, attacked)

    # SIGTERM (podman stop): gunicorn drains and exits 0, well within the grace period.
    stopping = time.monotonic()
    pm.podman("stop", f"--time={STOP_GRACE}", name, timeout=STOP_GRACE + 30)
    took = time.monotonic() - stopping
    print(f"stopped in {took:.1f} s")
    state = pm.podman("inspect", "--format={{.State.ExitCode}}", name).stdout.strip()
    logged = pm.podman("logs", name)
    logs = logged.stdout + logged.stderr
    assert state == "0", f"exit status {state} (137 = killed after the grace period)"
    assert took < STOP_GRACE and "Shutting down: Master" in logs


STALLED = 50
STALLED_HEADERS = b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nX-Stalled: "
STALLED_BODY = (
    b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\n"
    b'Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{"instances": [[1'
)


def _stall(port: int, prefix: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(prefix)
    return sock


def _p99(port: int, requests: int = 200) -> float:
    """Seconds: the p99 of `requests` 1-row predictions one after another, each answered."""
    took = []
    for _ in range(requests):
        started = time.monotonic()
        reply = predict(port, [IRIS_ROW])
        took.append(time.monotonic() - started)
        assert reply.status == 200, reply.raw
    return sorted(took)[int(0.99 * requests) - 1]
