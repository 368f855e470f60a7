"""podman for the image test: what it takes to build and run the image on a machine like CI's.

Measured on Debian bookworm (podman 4.3, buildah 1.28, runc, cgroup v1, no systemd), as root:
podman picks cgroupfs and the file events backend by itself there (and runc, or crun where
Debian's podman brought it, which fails on hybrid cgroups: `runtime_flags`), and the overlay
storage driver works on ext4; what it does need is ulimits below the host's hard limits (its
defaults, nofile and nproc 1048576+, make every container fail to start with "error setting
rlimit ... operation not permitted"). The default bridge network (netavark) publishes a port
on 127.0.0.1.

Docker Hub cannot be reached there, so the base is a Debian bookworm root filesystem with
python3 (3.11), python3-venv, ca-certificates and netbase, made by debootstrap from the mirror
apt uses and imported once (`podman image exists` first: CI pays it once per machine). pip
inside the build cannot verify PyPI's TLS through the egress proxy, so the wheels are
downloaded by the host's pip (its cache already holds them after `make dev`) and mounted into
the build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Bump the tag when the debootstrap command changes: a cached base is reused by name.
BASE_IMAGE = "localhost/serving-test-base:bookworm-py311-2"
IMAGE = "localhost/serving:test"
# What the official slim image has beyond minbase and the app may need: system CA certificates
# (libpq's sslrootcert=system, an S3 endpoint's private CA) and /etc/services (netbase).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "netbase")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Below any sane hard limit; gunicorn's sync workers need a few dozen descriptors each.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
BUILD_TIMEOUT = 1800
BASE_TIMEOUT = 900


class Unavailable(Exception):
    """podman cannot run here; the message is the reason the test skips with."""


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def runtime_flags() -> tuple[str, ...]:
    """`--runtime=runc` where runc is installed. Debian's podman package also brings crun and
    may pick it, and crun 1.8 refuses to start any container on a host whose cgroups are in
    hybrid mode (v1 with a v2 mount: "cgroups in hybrid mode not supported"), as seen here;
    runc runs there."""
    return ("--runtime=runc",) if shutil.which("runc") else ()


def check_available() -> None:
    """Raise Unavailable with the reason when podman cannot build and run images here."""
    if shutil.which("podman") is None:
        raise Unavailable("podman is not installed (`make podman` installs Debian's package)")
    if os.geteuid() != 0:
        raise Unavailable("needs root: debootstrap and rootful podman (no subuid setup here)")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0:
        raise Unavailable(f"`podman info` fails: {info.stderr.strip()[-500:]}")


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses (deb822 `URIs:` or one-line `deb` lines), else deb.debian.org."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for uri in re.findall(r"^\s*(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def ensure_base(workdir: Path) -> str:
    """The bookworm + python3 base image, built with debootstrap unless it already exists."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (`make podman` installs it)")
    rootfs, mirror = workdir / "rootfs", apt_mirror()
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
    result = subprocess.run(
        [*command, "bookworm", str(rootfs), mirror],
        capture_output=True,
        text=True,
        timeout=BASE_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise Unavailable(f"debootstrap from {mirror} failed: {result.stdout[-800:]}")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
    archive = workdir / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    podman("import", "--change", 'CMD ["python3"]', str(archive), BASE_IMAGE, timeout=300)
    shutil.rmtree(rootfs)
    archive.unlink()
    return BASE_IMAGE


def download_wheels(dest: Path) -> Path:
    """Every pinned runtime requirement as a CPython 3.11 wheel for this platform, by host pip."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--python-version=3.11",
            "--implementation=cp",
            "--requirement",
            str(REPO / "requirements.txt"),
            "--dest",
            str(dest),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"pip download failed:\n{result.stderr[-2000:]}"
    return dest


def build_image(base: str, wheels: Path, log: Path) -> str:
    """The repo's Dockerfile on `base`, pip installing from the mounted wheels only."""
    command = [
        "build",
        "--format=docker",  # keeps the HEALTHCHECK (the OCI format has none)
        *runtime_flags(),  # the RUN steps start containers too
        *ULIMITS,
        f"--build-arg=BASE_IMAGE={base}",
        "--build-arg=PIP_NO_INDEX=1",
        "--build-arg=PIP_FIND_LINKS=/wheels",
        f"--volume={wheels}:/wheels:ro",
        f"--tag={IMAGE}",
        str(REPO),
    ]
    result = podman(*command, timeout=BUILD_TIMEOUT, check=False)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (
        f"podman build failed:\n{(result.stdout + result.stderr)[-3000:]}"
    )
    return IMAGE
