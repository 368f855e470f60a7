"""The file-based model store: immutable version folders and one atomically replaced deployment.

Layout (DESIGN §2):  <root>/<name>/<version>/{model.joblib|.skops|.onnx,metadata.json}
                     <root>/<name>/deployment.json   aliases -> versions
                     <root>/<name>/history.jsonl     append-only audit
Every write happens under the model's lock file and goes through temp + fsync + rename, so a
crash or a concurrent writer never leaves a half-written version or deployment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import ModelNotFound, StoreError, VersionNotFound
from serving.store.deployment import route_doc, validate_weights
from serving.store.fsutil import (
    append_line,
    atomic_write_bytes,
    copy_with_sha256,
    exclusive_lock,
    fsync_dir,
)
from serving.store.history import previous_version, version_before_split

if TYPE_CHECKING:
    from serving.store.artifact_policy import ArtifactPolicy

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALIAS_RE = NAME_RE
DEFAULT_ALIAS = "production"
DEPLOYMENT = "deployment.json"
HISTORY = "history.jsonl"
METADATA = "metadata.json"
_LOCK = ".lock"


def validate_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise StoreError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def default_actor() -> str:
    with contextlib.suppress(Exception):
        return f"{getpass.getuser()}@{socket.gethostname()}"
    return "unknown"  # pragma: no cover


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class ModelStore:
    """Reads and writes one store root. Cheap to build; holds no open files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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
            if entry.is_dir() and NAME_RE.match(entry.name) and not entry.name.startswith(".")
        )

    def exists(self, name: str) -> bool:
        return bool(NAME_RE.match(name)) and self.model_dir(name).is_dir()

    def _existing(self, name: str) -> Path:
        """The folder of a stored model; ModelNotFound (not a name error) for readers."""
        if not self.exists(name):
            raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
        return self.model_dir(name)

    def versions(self, name: str) -> list[int]:
        path = self._existing(name)
        return sorted(int(e.name) for e in os.scandir(path) if e.name.isdigit() and e.is_dir())

    def version_dir(self, name: str, version: int) -> Path:
        path = self._existing(name) / str(int(version))
        if not path.is_dir():
            raise VersionNotFound(
                f"model {name!r} has no version {version}", {"model": name, "version": version}
            )
        return path

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

    def read_deployment(self, name: str) -> dict[str, Any]:
        """The deployment document; an empty one when the model was never activated."""
        try:
            data = json.loads(self.deployment_path(name).read_bytes())
        except FileNotFoundError:
            return {"aliases": {}, "revision": 0}
        except ValueError as exc:
            raise StoreError(f"{name}: {DEPLOYMENT} is not valid JSON ({exc})") from None
        aliases = data.get("aliases")
        if not isinstance(aliases, dict):
            raise StoreError(f"{name}: {DEPLOYMENT} has no aliases object")
        data["aliases"] = {str(k): int(v) for k, v in aliases.items()}
        return data

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
        path.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path / _LOCK):
            yield path

    def register(
        self,
        name: str,
        artifact: Path,
        reference_data: Path | None = None,
        activate: bool = False,
        categorical: set[str] | None = None,
        extra: dict[str, Any] | None = None,
        actor: str | None = None,
        policy: ArtifactPolicy | None = None,  # None: SERVING_ALLOW_PICKLE decides, no skops
    ) -> int:
        """Copy `artifact` in as the next version (with metadata) and return its number."""
        from serving.store import candidate  # scikit-learn and pandas: only for writers

        validate_name(name)
        artifact = Path(artifact)
        reference = _read_reference(reference_data) if reference_data else None
        prepared = candidate.prepare(artifact, reference, categorical, policy)
        with prepared as ready, self._locked(name) as model_dir:
            existing = [int(e.name) for e in os.scandir(model_dir) if e.name.isdigit()]
            version = max(existing, default=0) + 1
            metadata = {
                "name": name,
                "version": version,
                "artifact": ready.target,
                "created_at": _now(),
                "created_by": actor or default_actor(),
                "source": artifact.name,
                "reference": _reference_summary(reference_data, reference),
                "metrics": {},
                **ready.metadata,
                **(extra or {}),
            }
            self._publish_version(model_dir, version, ready.path, metadata, ready.target)
            self._append_history(name, "register", actor, version=version)
            if activate:
                self._set_alias(name, DEFAULT_ALIAS, version, "promote", actor)
        return version

    def register_prepared(
        self,
        name: str,
        artifact: Path,
        metadata: dict[str, Any],
        target: str,
        activate: bool = False,
        actor: str | None = None,
    ) -> int:
        """Publish an artifact whose metadata the caller built (a compiled model) as a version."""
        validate_name(name)
        with self._locked(name) as model_dir:
            existing = [int(e.name) for e in os.scandir(model_dir) if e.name.isdigit()]
            version = max(existing, default=0) + 1
            metadata = {
                **metadata,
                "name": name,
                "version": version,
                "artifact": target,
                "created_at": _now(),
                "created_by": actor or default_actor(),
            }
            self._publish_version(model_dir, version, Path(artifact), metadata, target)
            self._append_history(name, "register", actor, version=version)
            if activate:
                self._set_alias(name, DEFAULT_ALIAS, version, "promote", actor)
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

    def promote(
        self, name: str, version: int, alias: str = DEFAULT_ALIAS, actor: str | None = None
    ) -> int | None:
        """Point `alias` at `version` (ending any split of it); return its version before."""
        validate_name(alias, "alias")
        self.version_dir(name, version)
        with self._locked(name):
            return self._set_alias(name, alias, int(version), "promote", actor)

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS, actor: str | None = None) -> int:
        """Point `alias` back to the version it had before its current one (from history).

        A split alias (a canary) goes back to the one version it served before the split.
        """
        validate_name(alias, "alias")
        if not self.exists(name):
            raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
        with self._locked(name):
            deployment = self.read_deployment(name)
            current = deployment["aliases"].get(alias)
            if current is None:
                raise StoreError(f"{name}: alias {alias!r} points at no version")
            if alias in deployment.get("routes", {}):
                target = version_before_split(self.history(name), alias) or current
            else:
                target = previous_version(self.history(name), alias, current)
            if target is None:
                raise StoreError(f"{name}: alias {alias!r} has no earlier version to roll back to")
            self._set_alias(name, alias, target, "rollback", actor)
            return target

    def route(
        self,
        name: str,
        weights: dict[int, float],
        alias: str = DEFAULT_ALIAS,
        sticky: bool = False,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Split `alias` between versions by weight; the heaviest becomes its primary version.

        The experiment id (the salt of sticky hashing) is kept while the same versions are
        re-weighted, so a ramp from 10% to 20% moves only the users it must.
        """
        validate_name(alias, "alias")
        validate_weights(weights, self.versions(name))
        with self._locked(name):
            deployment = self.read_deployment(name)
            old = deployment.setdefault("routes", {}).get(alias) or {}
            same = sorted(v["version"] for v in old.get("variants", [])) == sorted(weights)
            experiment = (
                old.get("experiment")
                if same and old.get("experiment")
                else (f"{name}/{alias}/{deployment.get('revision', 0) + 1}")
            )
            doc = route_doc(weights, sticky, experiment)
            deployment["routes"][alias] = doc
            primary = max(sorted(weights), key=lambda v: weights[v])
            before = deployment["aliases"].get(alias)
            deployment["aliases"][alias] = primary
            self._write_deployment(name, deployment)
            self._append_history(
                name, "route", actor, alias=alias, previous=before, version=primary, route=doc
            )
            return doc

    def shadow(
        self, name: str, version: int | None, alias: str = DEFAULT_ALIAS, actor: str | None = None
    ) -> int | None:
        """Send a copy of `alias`'s traffic to `version` (None: stop); return the one before."""
        validate_name(alias, "alias")
        if version is None:
            self._existing(name)  # stopping a shadow must not create an unknown model's folder
        else:
            self.version_dir(name, version)
        with self._locked(name):
            deployment = self.read_deployment(name)
            shadows = deployment.setdefault("shadows", {})
            before = shadows.pop(alias, None)
            if version is not None:
                shadows[alias] = int(version)
            self._write_deployment(name, deployment)
            self._append_history(
                name, "shadow", actor, alias=alias, previous=before, shadow=version
            )
            return before

    def _set_alias(
        self, name: str, alias: str, version: int, action: str, actor: str | None
    ) -> int | None:
        deployment = self.read_deployment(name)
        before = deployment["aliases"].get(alias)
        deployment["aliases"][alias] = version
        ended = deployment.get("routes", {}).pop(alias, None)
        self._write_deployment(name, deployment)
        extra = {"ended_route": ended} if ended else {}
        self._append_history(
            name, action, actor, alias=alias, previous=before, version=version, **extra
        )
        return before

    def _write_deployment(self, name: str, deployment: dict[str, Any]) -> None:
        deployment["revision"] = int(deployment.get("revision", 0)) + 1
        deployment["updated_at"] = _now()
        body = json.dumps(deployment, indent=2, sort_keys=True).encode() + b"\n"
        try:
            atomic_write_bytes(self.deployment_path(name), body)
        except OSError as exc:
            raise StoreError(f"could not write {DEPLOYMENT}: {exc.strerror or exc}") from None

    def _append_history(self, name: str, action: str, actor: str | None, **fields: Any) -> None:
        event = {"at": _now(), "action": action, "actor": actor or default_actor(), **fields}
        try:
            append_line(self.model_dir(name) / HISTORY, json.dumps(event).encode())
        except OSError as exc:
            raise StoreError(f"could not append to {HISTORY}: {exc.strerror or exc}") from None


def _read_reference(path: Path) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except Exception as exc:
        raise StoreError(f"{path}: cannot be read as CSV with a header ({exc})") from None
    if frame.empty:
        raise StoreError(f"{path}: reference data has no rows")
    return frame


def _reference_summary(path: Path | None, frame: Any) -> dict[str, Any] | None:
    if path is None or frame is None:
        return None
    return {"source": Path(path).name, "rows": len(frame), "columns": list(map(str, frame))}
