"""The local model store: immutable version folders and one atomically replaced deployment.

Layout (DESIGN §2):  <root>/<name>/<version>/{model.joblib|.skops|.onnx,metadata.json}
                     <root>/<name>/deployment.json   aliases -> versions
                     <root>/<name>/history.jsonl     append-only audit
Every write happens under the model's lock file and goes through temp + fsync + rename, so a
crash or a concurrent writer never leaves a half-written version or deployment. The verbs
themselves are in `serving.store.base`, shared with the S3 backend.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.errors import ModelNotFound, StoreError, StoreReadOnly, VersionNotFound
from serving.store.base import (
    DEFAULT_ALIAS,
    DEPLOYMENT,
    HISTORY,
    METADATA,
    NAME_RE,
    Mutation,
    StoreBase,
    damaged_json,
    default_actor,
    empty_deployment,
    new_event,
    now_iso,
    parse_deployment,
    validate_name,
)
from serving.store.fsutil import (
    append_line,
    atomic_write_bytes,
    copy_with_sha256,
    exclusive_lock,
    fsync_dir,
)

__all__ = ["DEFAULT_ALIAS", "ModelStore", "default_actor", "validate_name"]
ALIAS_RE = NAME_RE
_LOCK = ".lock"
# The artifact of versions older than the `artifact` metadata field (serving.store.artifacts
# says so too; not imported from there: it pulls in scikit-learn).
ARTIFACT_NAME = "model.joblib"


class ModelStore(StoreBase):
    """Reads and writes one store root. Cheap to build; holds no open files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    # -- reading -------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        validate_name(name)
        path = (self.root / name).resolve()
        if path.parent != self.root.resolve():
            raise StoreError(f"model name {name!r} escapes the store root")
        return path

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in os.scandir(self.root)
            if entry.is_dir()
            and NAME_RE.match(entry.name)
            and not entry.name.startswith(".")
            and _holds_a_model(entry.path)
        )

    def exists(self, name: str) -> bool:
        if not NAME_RE.match(name):
            return False
        path = self.model_dir(name)
        return path.is_dir() and _holds_a_model(path)

    def _existing(self, name: str) -> Path:
        """The folder of a stored model; ModelNotFound (not a name error) for readers."""
        if not self.exists(name):
            raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
        return self.model_dir(name)

    def versions(self, name: str) -> list[int]:
        path = self._existing(name)
        return sorted(int(e.name) for e in os.scandir(path) if e.name.isdigit() and e.is_dir())

    def version_dir(self, name: str, version: int) -> Path:
        """The folder holding the version's files (on this backend: the store itself)."""
        path = self._existing(name) / str(int(version))
        if not path.is_dir():
            raise VersionNotFound(
                f"model {name!r} has no version {version}", {"model": name, "version": version}
            )
        return path

    def local_root(self) -> Path:
        """A local store's root holding the versions read so far (batch workers load there)."""
        return self.root

    def require_version(self, name: str, version: int) -> None:
        self.version_dir(name, version)

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        path = self.version_dir(name, version) / METADATA
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"{name} v{version}: {METADATA} is missing") from None
        except ValueError as exc:
            raise StoreError(f"{name} v{version}: {METADATA} is not valid JSON ({exc})") from None

    def deployment_path(self, name: str) -> Path:
        return self.model_dir(name) / DEPLOYMENT

    def deployment_signature(self, name: str) -> tuple[int, int, int] | None:
        """What changes when the deployment does (inode, mtime, size); None: never activated."""
        try:
            st = os.stat(self.deployment_path(name))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def files_signature(self, name: str, version: int) -> tuple[int, ...]:
        """What changes when a version's files do: a failed load is retried only then."""
        out: list[int] = []
        try:
            folder = self.version_dir(name, version)
        except (StoreError, ModelNotFound, VersionNotFound):
            return (-1,)
        try:  # the artifact's file is named by the metadata (model.joblib, model.onnx...)
            artifact = str(self.read_metadata(name, version).get("artifact") or ARTIFACT_NAME)
        except (StoreError, OSError, AttributeError):
            artifact = ARTIFACT_NAME
        for filename in (METADATA, artifact):
            try:
                st = os.stat(folder / filename)
                out += [st.st_ino, st.st_mtime_ns, st.st_size]
            except OSError:
                out += [-1]
        return tuple(out)

    def read_deployment(self, name: str) -> dict[str, Any]:
        """The deployment document; an empty one when the model was never activated."""
        try:
            data = json.loads(self.deployment_path(name).read_bytes())
        except FileNotFoundError:
            return empty_deployment()
        except ValueError as exc:
            raise damaged_json(name, exc) from None
        return parse_deployment(name, data)

    def history(self, name: str) -> list[dict[str, Any]]:
        path = self.model_dir(name) / HISTORY
        if not path.exists():
            return []
        events = []
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):  # a torn last line after a crash is skipped
                events.append(json.loads(line))
        return events

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        path = self.model_dir(name)
        with contextlib.ExitStack() as held:
            try:
                path.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive_lock(path / _LOCK))
            except OSError as exc:  # a read-only mount: every write stops here, unchanged
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                raise StoreReadOnly(f"the model store cannot be written: {exc.strerror}") from None
            yield path

    def _publish_new(self, name: str, artifact: Path, metadata: dict[str, Any], target: str) -> int:
        with self._locked(name) as model_dir:
            existing = [int(e.name) for e in os.scandir(model_dir) if e.name.isdigit()]
            version = max(existing, default=0) + 1
            metadata["version"] = version
            self._publish_version(model_dir, version, artifact, metadata, target)
        return version

    def _publish_version(
        self, model_dir: Path, version: int, artifact: Path, metadata: dict[str, Any], target: str
    ) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
        try:
            sha, size = copy_with_sha256(artifact, tmp / target)
            metadata.update(sha256=sha, size_bytes=size)
            body = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False).encode()
            atomic_write_bytes(tmp / METADATA, body + b"\n")
            os.rename(tmp, model_dir / str(version))
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise StoreError(
                    f"could not write version {version}: {exc.strerror or exc}"
                ) from None
            raise
        fsync_dir(model_dir)

    def import_version(
        self, name: str, version: int, folder: Path, metadata: dict[str, Any]
    ) -> None:
        """Publish a version under its own number (`serving store copy`); refuse a clash."""
        with self._locked(name) as model_dir:
            if (model_dir / str(version)).exists():
                raise StoreError(f"{name} v{version} already exists in {self.location}")
            target = str(metadata["artifact"])
            self._publish_version(model_dir, version, folder / target, dict(metadata), target)

    def _change(self, name: str, action: str, actor: str | None, mutate: Mutation) -> Any:
        with self._locked(name):
            deployment = self.read_deployment(name)
            result, fields = mutate(deployment)
            self._write_deployment(name, deployment)
            self._append(name, new_event(action, actor, fields))
            return result

    def _record(self, name: str, action: str, actor: str | None, **fields: Any) -> None:
        with self._locked(name):
            self._append(name, new_event(action, actor, fields))

    def write_deployment_copy(self, name: str, deployment: dict[str, Any], events: list) -> None:
        """Replace deployment and history wholesale (`serving store copy` into a new store)."""
        with self._locked(name) as model_dir:
            if (model_dir / DEPLOYMENT).exists() or (model_dir / HISTORY).exists():
                raise StoreError(f"{name} already has a deployment in {self.location}")
            for event in events:
                append_line(model_dir / HISTORY, json.dumps(event).encode())
            body = json.dumps(deployment, indent=2, sort_keys=True).encode() + b"\n"
            atomic_write_bytes(self.deployment_path(name), body)

    def _write_deployment(self, name: str, deployment: dict[str, Any]) -> None:
        deployment["revision"] = int(deployment.get("revision", 0)) + 1
        deployment["updated_at"] = now_iso()
        body = json.dumps(deployment, indent=2, sort_keys=True).encode() + b"\n"
        try:
            atomic_write_bytes(self.deployment_path(name), body)
        except OSError as exc:
            raise StoreError(f"could not write {DEPLOYMENT}: {exc.strerror or exc}") from None

    def _append(self, name: str, event: dict[str, Any]) -> None:
        try:
            append_line(self.model_dir(name) / HISTORY, json.dumps(event).encode())
        except OSError as exc:
            raise StoreError(f"could not append to {HISTORY}: {exc.strerror or exc}") from None


def _holds_a_model(path: str | Path) -> bool:
    """A model folder holds a version, a deployment or a history. A register that failed (a
    full disk) or died before it published leaves at most its lock file: no model to list."""
    with os.scandir(path) as entries:
        return any(e.name.isdigit() or e.name in (DEPLOYMENT, HISTORY) for e in entries)
