"""A throwaway PostgreSQL server for the tests: Debian's `initdb` and `pg_ctl` in a temp dir.

`Cluster.start()` finds the binaries under /usr/lib/postgresql/*/bin (`make postgres` installs
them), makes a cluster in a new temp dir owned by an unprivileged user (PostgreSQL refuses to
run as root: the `postgres` user the Debian package creates, else `nobody`), listens on
127.0.0.1 at a free port with password authentication, and `database()` hands out a fresh
database per test, so tests never share tables. Each pytest-xdist worker starts its own.
Durability is off (fsync, synchronous_commit): a test cluster is thrown away.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER, PASSWORD = "serving", "pw-Secret-42"  # the password: tests check it never leaks
_COUNTER = itertools.count()


class Unavailable(Exception):
    """PostgreSQL cannot be started here; the message says why (tests skip with it)."""


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory with initdb and pg_ctl, if any."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    found = [p for p in found if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runner() -> tuple[list[str], str | None]:
    """The command prefix that runs as an unprivileged user, and that user (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root and runuser is missing: cannot drop privileges")
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return [runuser, "-u", name, "--"], name
    raise Unavailable("running as root and neither a postgres nor a nobody user exists")


class Cluster:
    """One PostgreSQL server in a temp dir; `stop()` and `start()` again keep its data."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.prefix, self.user = _runner()
        self.root = Path(tempfile.mkdtemp(prefix="serving-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if self.user is not None:
            shutil.chown(self.root, self.user)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user is not None:
            shutil.chown(pwfile, self.user)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-E", "UTF8",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
        )  # fmt: skip

    def _run(self, tool: str, *args: str) -> str:
        command = [*self.prefix, str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise Unavailable(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        return done.stdout

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=300"
        )
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_COUNTER)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(Unavailable):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster_or_skip() -> Iterator[Cluster]:
    """A running cluster for the block, removed after; the test skips, saying why, without."""
    import pytest

    try:
        cluster = start_cluster()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.remove()


def start_cluster() -> Cluster:
    """A running cluster, or Unavailable saying why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed (requirements.txt pins it)") from None
    bindir = find_bindir()
    if bindir is None:
        raise Unavailable(
            "PostgreSQL is not installed: no initdb under /usr/lib/postgresql/*/bin "
            "(`make postgres` installs Debian's postgresql package)"
        )
    cluster = Cluster(bindir)
    for attempt in range(3):  # another process may take the free port before the server does
        try:
            cluster.start()
            return cluster
        except Unavailable:
            if attempt == 2:
                cluster.remove()
                raise
            cluster.port = free_port()
    raise AssertionError("unreachable")
