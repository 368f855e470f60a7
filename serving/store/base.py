"""The store's verbs, written once over two backends (a local directory, an S3 bucket).

A backend supplies the primitives: list models and versions, read a deployment and the
history, publish a new version write-once (`_publish_new`), and apply one change to a
deployment atomically (`_change`: a lock on a local disk, compare-and-swap on an object
store). Every verb (register, promote, rollback, route, shadow) is defined here, so both
backends behave alike by construction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import DeploymentDamaged, ModelNotFound, StoreError
from serving.store.deployment import route_doc, validate_weights
from serving.store.history import previous_version, version_before_split

if TYPE_CHECKING:
    from serving.store.artifact_policy import ArtifactPolicy

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_ALIAS = "production"
DEPLOYMENT = "deployment.json"
HISTORY = "history.jsonl"
METADATA = "metadata.json"

# A change to a deployment: mutates the document in place, returns (result, event fields).
Mutation = Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]]


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


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def empty_deployment() -> dict[str, Any]:
    return {"aliases": {}, "revision": 0}


def parse_deployment(name: str, data: Any) -> dict[str, Any]:
    """A deployment document checked for shape; DeploymentDamaged when it is not one.

    aliases {str: int}, shadows {str: int}, routes {str: {"variants": [{"version": int,
    "weight": number}, ...], ...}}: a worker reads nothing else of it.
    """
    aliases = data.get("aliases") if isinstance(data, dict) else None
    if not isinstance(aliases, dict):
        raise DeploymentDamaged(f"{name}: {DEPLOYMENT} has no aliases object", {"model": name})
    try:
        data["aliases"] = _versions_by_alias(aliases)
        if data.get("shadows") is not None:
            data["shadows"] = _versions_by_alias(data["shadows"])
        for doc in (data.get("routes") or {}).values():
            for variant in doc["variants"]:
                variant["version"] = _version(variant["version"])
                variant["weight"] = float(variant["weight"])
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DeploymentDamaged(
            f"{name}: {DEPLOYMENT} has an alias, route or shadow that is not a version",
            {"model": name},
        ) from None
    return data


def damaged_json(name: str, exc: ValueError) -> DeploymentDamaged:
    return DeploymentDamaged(f"{name}: {DEPLOYMENT} is not valid JSON ({exc})", {"model": name})


def _versions_by_alias(doc: Any) -> dict[str, int]:
    if not isinstance(doc, dict):
        raise TypeError(doc)
    return {str(alias): _version(version) for alias, version in doc.items()}


def _version(value: Any) -> int:
    """A version number: an int >= 1 (a bool or a fraction is damage, not a version)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(value)
    return value


class StoreBase:
    """What every store does; subclasses supply the primitives named in the module doc."""

    location: str
    list_interval = 0.0  # seconds between two listings by a worker's poller (0: every poll)
    # Record who registered a version (`created_by`: the actor, by default user@host) in its
    # metadata; SERVING_RECORD_CREATED_BY=false (or `register --no-created-by`) omits it.
    record_created_by = True

    # -- primitives (per backend) ---------------------------------------------------------

    def list_models(self) -> list[str]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def versions(self, name: str) -> list[int]:
        raise NotImplementedError

    def require_version(self, name: str, version: int) -> None:
        """VersionNotFound (or ModelNotFound) unless `version` is published."""
        raise NotImplementedError

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        raise NotImplementedError

    def read_deployment(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def deployment_signature(self, name: str) -> object:
        """What changes when the deployment does (None: never activated); workers poll it."""
        raise NotImplementedError

    def files_signature(self, name: str, version: int) -> tuple[int, ...]:
        """What changes when a version's files do: a failed load is retried only then."""
        raise NotImplementedError

    def prune_cache(self, held: set[tuple[str, int]]) -> None:
        """Keep any local copies of versions within bounds (a directory store has none)."""

    def history(self, name: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def version_dir(self, name: str, version: int) -> Path:
        """A local folder with the version's files (an object store's: its verified cache)."""
        raise NotImplementedError

    def import_version(
        self, name: str, version: int, folder: Path, metadata: dict[str, Any]
    ) -> None:
        """Publish a version under its own number (store copy); StoreError on a clash."""
        raise NotImplementedError

    def write_deployment_copy(
        self, name: str, deployment: dict[str, Any], events: list[dict[str, Any]]
    ) -> None:
        """Write a copied model's deployment and history (store copy, into a fresh model)."""
        raise NotImplementedError

    def _publish_new(self, name: str, artifact: Path, metadata: dict[str, Any], target: str) -> int:
        """Publish the next free version number, write-once; fills version, sha256, size."""
        raise NotImplementedError

    def _change(self, name: str, action: str, actor: str | None, mutate: Mutation) -> Any:
        """Apply `mutate` to the deployment atomically and record it in history."""
        raise NotImplementedError

    def _record(self, name: str, action: str, actor: str | None, **fields: Any) -> None:
        """Append an event that changes no deployment (a register) to history."""
        raise NotImplementedError

    # -- the verbs ------------------------------------------------------------------------

    def _existing_name(self, name: str) -> None:
        validate_name(name)
        if not self.exists(name):
            raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})

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
        created_by: bool | None = None,  # None: as `record_created_by` says
        nullable: dict[str, bool] | None = None,  # feature -> takes missing values (else probed)
        text: set[str] | None = None,  # text features beyond those a vectorizer reads
    ) -> int:
        """Copy `artifact` in as the next version (with metadata) and return its number."""
        from serving.store import candidate  # scikit-learn and pandas: only for writers

        validate_name(name)
        artifact = Path(artifact)
        reference = _read_reference(reference_data) if reference_data else None
        prepared = candidate.prepare(artifact, reference, categorical, policy, nullable, text)
        with prepared as ready:
            metadata = {
                "source": artifact.name,
                "reference": _reference_summary(reference_data, reference),
                "metrics": {},
                **ready.metadata,
                **(extra or {}),
            }
            return self.register_prepared(
                name, ready.path, metadata, ready.target, activate, actor, created_by
            )

    def register_prepared(
        self,
        name: str,
        artifact: Path,
        metadata: dict[str, Any],
        target: str,
        activate: bool = False,
        actor: str | None = None,
        created_by: bool | None = None,
    ) -> int:
        """Publish an artifact whose metadata the caller built (a compiled model) as a version."""
        validate_name(name)
        metadata = {**metadata, "name": name, "artifact": target, "created_at": now_iso()}
        metadata.pop("created_by", None)  # a compiled model's source's: not this version's
        if self.record_created_by if created_by is None else created_by:
            metadata["created_by"] = actor or default_actor()
        version = self._publish_new(name, Path(artifact), metadata, target)
        self._record(name, "register", actor, version=version)
        if activate:
            self._change(name, "promote", actor, _set_alias(DEFAULT_ALIAS, version))
        return version

    def promote(
        self, name: str, version: int, alias: str = DEFAULT_ALIAS, actor: str | None = None
    ) -> int | None:
        """Point `alias` at `version` (ending any split of it); return its version before."""
        validate_name(alias, "alias")
        self.require_version(name, version)
        return self._change(name, "promote", actor, _set_alias(alias, int(version)))

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS, actor: str | None = None) -> int:
        """Point `alias` back to the version it had before its current one (from history).

        A split alias (a canary) goes back to the one version it served before the split.
        """
        validate_name(alias, "alias")
        self._existing_name(name)

        def mutate(deployment: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            current = deployment["aliases"].get(alias)
            if current is None:
                raise StoreError(f"{name}: alias {alias!r} points at no version")
            if alias in deployment.get("routes", {}):
                target = version_before_split(self.history(name), alias) or current
            else:
                target = previous_version(self.history(name), alias, current)
            if target is None:
                raise StoreError(f"{name}: alias {alias!r} has no earlier version to roll back to")
            _, fields = _set_alias(alias, target)(deployment)
            return target, fields

        return self._change(name, "rollback", actor, mutate)

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

        def mutate(deployment: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
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
            return doc, {"alias": alias, "previous": before, "version": primary, "route": doc}

        return self._change(name, "route", actor, mutate)

    def shadow(
        self, name: str, version: int | None, alias: str = DEFAULT_ALIAS, actor: str | None = None
    ) -> int | None:
        """Send a copy of `alias`'s traffic to `version` (None: stop); return the one before."""
        validate_name(alias, "alias")
        if version is None:
            self._existing_name(name)  # stopping a shadow must not create an unknown model
        else:
            self.require_version(name, version)

        def mutate(deployment: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            shadows = deployment.setdefault("shadows", {})
            before = shadows.pop(alias, None)
            if version is not None:
                shadows[alias] = int(version)
            return before, {"alias": alias, "previous": before, "shadow": version}

        return self._change(name, "shadow", actor, mutate)


def _set_alias(alias: str, version: int) -> Mutation:
    def mutate(deployment: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        before = deployment["aliases"].get(alias)
        deployment["aliases"][alias] = version
        ended = deployment.get("routes", {}).pop(alias, None)
        fields = {"alias": alias, "previous": before, "version": version}
        if ended:
            fields["ended_route"] = ended
        return before, fields

    return mutate


def new_event(action: str, actor: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    return {"at": now_iso(), "action": action, "actor": actor or default_actor(), **fields}


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
