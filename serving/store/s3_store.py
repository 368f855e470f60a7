"""The model store on an S3-compatible object store, for replicas that share one bucket.

Layout under s3://BUCKET/PREFIX/ (the local layout, history as one object per event):
    <name>/<version>/{.claim,<artifact>,metadata.json}   metadata.json last: the version is
                                                        visible once it exists (write-once)
    <name>/deployment.json                              changed by compare-and-swap on its ETag
    <name>/history/<revision>-a.json                    the change that made that revision
    <name>/history/<revision>-b-<at>-<id>.json          a register made at that revision
A version number is claimed with a conditional create (`If-None-Match: *`) of its `.claim`, so
two concurrent registers never share one; the deployment changes with `If-Match` (lost race:
re-read, re-apply, retry). Its newest event rides inside it (`last_event`) until the next change
writes it out, so a crash between the two writes loses no history. Workers poll each model's
deployment with a conditional GET and fetch artifacts once per machine into an ArtifactCache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from serving.errors import (
    DeploymentDamaged,
    ModelNotFound,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    VersionNotFound,
)
from serving.store import s3_client as s3
from serving.store.artifact_cache import ArtifactCache
from serving.store.base import (
    DEPLOYMENT,
    METADATA,
    NAME_RE,
    Mutation,
    StoreBase,
    damaged_json,
    empty_deployment,
    new_event,
    now_iso,
    parse_deployment,
    validate_name,
)
from serving.store.fsutil import sha256_file

log = logging.getLogger(__name__)

CAS_TRIES = 25
CLAIM = ".claim"
DEFAULT_CACHE_BYTES = 10 * 1024**3


class S3Store(StoreBase):
    """One bucket prefix. Cheap to build; the boto3 client is made per process on first use."""

    list_interval = 10.0  # workers list the bucket this often; each poll is one GET per model

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        cache_max_bytes: int = DEFAULT_CACHE_BYTES,
        serve_cached: bool = False,
        client: Any = None,
    ) -> None:
        self._where = s3.S3Location.parse(url)
        self.location = str(self._where)
        # One cache directory may serve several stores: each gets its own part of it.
        part = Path("s3", self._where.bucket, *self._where.prefix.split("/"))
        self.cache = ArtifactCache(Path(cache_dir) / part, cache_max_bytes)
        self._serve_cached = serve_cached  # workers: during an outage, what the cache holds
        self._client, self._client_pid = client, os.getpid() if client else -1
        self._etags: dict[str, str] = {}
        self._metadata: dict[tuple[str, int], dict[str, Any]] = {}
        self._events: dict[str, dict[str, Any]] = {}

    @property
    def client(self) -> Any:
        if self._client_pid != os.getpid():  # boto3 clients do not survive a fork
            self._client, self._client_pid = s3.make_client(), os.getpid()
        return self._client

    def _key(self, name: str, *parts: str) -> str:
        return self._where.key(validate_name(name), *parts)

    def _list(self, prefix: str, delimiter: str = "") -> tuple[list[str], list[str]]:
        """(keys, common prefixes) under `prefix`, relative to it, every page."""
        keys: list[str] = []
        prefixes: list[str] = []
        args = {"Bucket": self._where.bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        with s3.translated(self._where, f"list {prefix or '/'}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                keys += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
                prefixes += [p["Prefix"][len(prefix) :] for p in page.get("CommonPrefixes", [])]
        return keys, prefixes

    def _get(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str] | None:
        """(body, ETag); None when absent; ("", etag) when unchanged since `if_none_match`."""
        args = {"Bucket": self._where.bucket, "Key": key}
        if if_none_match:
            args["IfNoneMatch"] = if_none_match
        from botocore.exceptions import ClientError

        with s3.translated(self._where, f"read {key}"):
            try:
                answer = self.client.get_object(**args)
            except ClientError as exc:
                if s3.is_not_modified(exc):
                    return b"", str(if_none_match)
                if s3.is_missing(exc):
                    return None
                raise
            return answer["Body"].read(), answer["ETag"]

    def _put(self, key: str, body: bytes, **condition: str) -> str | None:
        """Write `body`; None when the condition (IfNoneMatch/IfMatch) did not hold."""
        from botocore.exceptions import ClientError

        with s3.translated(self._where, f"write {key}"):
            try:
                answer = self.client.put_object(
                    Bucket=self._where.bucket, Key=key, Body=body, **condition
                )
            except ClientError as exc:
                if s3.is_precondition_failed(exc) or (
                    "IfNoneMatch" in condition
                    and s3.error_code(exc) == "ConditionalRequestConflict"
                ):
                    return None
                raise
        return answer.get("ETag", "")

    # -- reading -------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        try:
            _, prefixes = self._list(self._where.prefix, "/")
        except StoreUnavailable:
            if not self._serve_cached:
                raise
            return self.cache.cached_models()
        return sorted(p.rstrip("/") for p in prefixes if NAME_RE.match(p.rstrip("/")))

    def exists(self, name: str) -> bool:
        if not NAME_RE.match(name):
            return False
        with s3.translated(self._where, f"list {name}"):
            page = self.client.list_objects_v2(
                Bucket=self._where.bucket, Prefix=self._key(name) + "/", MaxKeys=1
            )
        return bool(page.get("KeyCount") or page.get("Contents"))

    def versions(self, name: str) -> list[int]:
        keys, _ = self._list(self._key(name) + "/")
        if not keys:
            raise ModelNotFound(f"model {name!r} is not in the store", {"model": name})
        return sorted(int(k.split("/")[0]) for k in keys if _is_metadata_key(k))

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        key = (name, int(version))
        if key in self._metadata:  # published versions never change
            return self._metadata[key]
        try:
            found = self._get(self._key(name, str(int(version)), METADATA))
        except StoreUnavailable:
            cached = self.cache.cached(name, version) if self._serve_cached else None
            if cached is None:
                raise
            return json.loads((cached / METADATA).read_bytes())  # verified when fetched
        if found is None:
            self._existing_name(name)
            raise VersionNotFound(
                f"model {name!r} has no version {version}", {"model": name, "version": version}
            )
        try:
            metadata = json.loads(found[0])
        except ValueError as exc:
            raise StoreError(f"{name} v{version}: {METADATA} is not valid JSON ({exc})") from None
        self._metadata[key] = metadata
        return metadata

    def local_root(self) -> Path:
        """The cache: a local store layout holding the versions fetched so far."""
        return self.cache.root

    def prune_cache(self, held: set[tuple[str, int]]) -> None:
        """Keep the cache under its bound; versions this worker holds or a deployment (last
        seen) refers to stay."""
        keep = set(held)
        for name in self.cache.cached_models():
            body = self.cache.load_deployment(name)
            try:
                keep.update((name, v) for v in _referenced(json.loads(body or b"{}")))
            except (ValueError, TypeError, AttributeError):
                continue
        for name, version in self.cache.prune(keep):
            log.info("cache: evicted %s v%s", name, version, extra={"model": name})

    def require_version(self, name: str, version: int) -> None:
        self.read_metadata(name, version)

    def version_dir(self, name: str, version: int) -> Path:
        """The version's files in this machine's cache, downloaded and verified if needed."""
        cached = self.cache.cached(name, version)
        if cached is not None:
            return self.cache.fetch(name, version, {}, _never)
        metadata = self.read_metadata(name, version)

        def download(artifact: str, target: Path) -> None:
            with s3.translated(self._where, f"download {name} v{version}"):
                self.client.download_file(
                    self._where.bucket, self._key(name, str(int(version)), artifact), str(target)
                )

        return self.cache.fetch(name, version, metadata, download)

    def files_signature(self, name: str, version: int) -> tuple[int, ...]:
        """Versions are write-once: a failed one is retried only when its cache copy changes."""
        cached = self.cache.cached(name, version)
        return (1, int(cached.stat().st_mtime_ns)) if cached else (0,)

    def deployment_signature(self, name: str) -> str | None:
        """The deployment's ETag, by a conditional GET (a 304 when nothing changed)."""
        key = self._key(name, DEPLOYMENT)
        try:
            found = self._get(key, self._etags.get(name))
        except StoreUnavailable:
            if not self._serve_cached or name in self._etags:
                raise  # a worker that read the store keeps what it has (the loader's rule)
            body = self.cache.load_deployment(name)
            return None if body is None else f"cached:{hash(body)}"
        if found is None:
            self._etags.pop(name, None)
            return None
        body, etag = found
        if body:
            self.cache.save_deployment(name, body)
        self._etags[name] = etag
        return etag

    def read_deployment(self, name: str) -> dict[str, Any]:
        doc = self._read_deployment(name)[0]
        doc.pop("last_event", None)  # the store's own bookkeeping (history shows it)
        return doc

    def _read_deployment(self, name: str) -> tuple[dict[str, Any], str | None]:
        try:
            found = self._get(self._key(name, DEPLOYMENT))
        except StoreUnavailable:
            cached = self.cache.load_deployment(name) if self._serve_cached else None
            if cached is None:
                raise
            found = (cached, None)
        if found is None:
            return empty_deployment(), None
        try:
            doc = parse_deployment(name, json.loads(found[0]))
        except ValueError as exc:
            raise damaged_json(name, exc) from None
        return doc, found[1]

    def history(self, name: str) -> list[dict[str, Any]]:
        prefix = self._key(name, "history") + "/"
        keys, _ = self._list(prefix)
        events = []
        for key in sorted(k for k in keys if k.endswith(".json")):
            if key not in self._events:  # events never change: read each once per process
                found = self._get(prefix + key)
                if found is None:
                    continue
                try:
                    self._events[key] = json.loads(found[0])
                except ValueError:
                    continue
            events.append(self._events[key])
        last = None
        with contextlib.suppress(DeploymentDamaged):  # damaged: the events written out only
            last = self._read_deployment(name)[0].get("last_event")
        if last and f"{int(last['revision']):012d}-a.json" not in keys:
            events.append(last)  # the newest change, not yet written out as its own object
        return events

    # -- writing -------------------------------------------------------------------------

    def _publish_new(self, name: str, artifact: Path, metadata: dict[str, Any], target: str) -> int:
        try:
            sha, size = sha256_file(artifact), artifact.stat().st_size
        except OSError as exc:
            raise StoreError(f"cannot read {artifact.name}: {exc.strerror or exc}") from None
        keys, _ = self._list(self._key(name) + "/")
        numbers = [int(k.split("/")[0]) for k in keys if k.split("/")[0].isdigit()]
        version = max(numbers, default=0) + 1
        while self._put(self._key(name, str(version), CLAIM), b"", IfNoneMatch="*") is None:
            version += 1  # another register claimed it first
        metadata.update(version=version, sha256=sha, size_bytes=size)
        self._upload_version(name, version, artifact, metadata, target)
        return version

    def _upload_version(
        self, name: str, version: int, artifact: Path, metadata: dict[str, Any], target: str
    ) -> None:
        body = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
        try:
            with s3.translated(self._where, f"upload {name} v{version}"):
                self.client.upload_file(
                    str(artifact), self._where.bucket, self._key(name, str(version), target)
                )
            written = self._put(self._key(name, str(version), METADATA), body, IfNoneMatch="*")
        except StoreError as exc:  # a full or failing store: leave no claim to list
            with contextlib.suppress(Exception):
                self._unclaim(name, version, target)
            raise StoreError(f"could not write version {version}: {exc}") from None
        if written is None:
            raise StoreError(f"could not write version {version}: another writer published it")

    def _unclaim(self, name: str, version: int, target: str) -> None:
        """An unpublished version's keys gone, and the folders SeaweedFS would list."""
        for key in [self._key(name, str(version), part) for part in (target, CLAIM, "")]:
            self.client.delete_object(Bucket=self._where.bucket, Key=key)
        if not self._list(self._key(name) + "/")[0]:
            self.client.delete_object(Bucket=self._where.bucket, Key=self._key(name) + "/")

    def import_version(
        self, name: str, version: int, folder: Path, metadata: dict[str, Any]
    ) -> None:
        """Publish a version under its own number (`serving store copy`); refuse a clash."""
        if self._put(self._key(name, str(version), CLAIM), b"", IfNoneMatch="*") is None:
            raise StoreError(f"{name} v{version} already exists in {self.location}")
        target = str(metadata["artifact"])
        self._upload_version(name, version, folder / target, dict(metadata), target)

    def _change(self, name: str, action: str, actor: str | None, mutate: Mutation) -> Any:
        for attempt in range(CAS_TRIES):
            doc, etag = self._read_deployment(name)
            if etag is None and doc.get("revision"):
                raise StoreUnavailable(f"object store {self._where.bucket} unreachable")
            self._write_out(name, doc.pop("last_event", None))
            result, fields = mutate(doc)
            revision = int(doc.get("revision", 0)) + 1
            event = {**new_event(action, actor, fields), "revision": revision}
            doc.update(revision=revision, updated_at=now_iso(), last_event=event)
            body = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            if self._put(self._key(name, DEPLOYMENT), body, **condition) is not None:
                self._write_out(name, event)
                return result
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # lost the race: again
        raise StoreConflict(
            f"{name}: the deployment kept changing under {CAS_TRIES} attempts; "
            "nothing was changed, try again"
        )

    def _write_out(self, name: str, event: dict[str, Any] | None) -> None:
        """Write a change's event as its own history object (once; a repeat is a no-op)."""
        if event and "revision" in event:
            key = self._key(name, "history", f"{int(event['revision']):012d}-a.json")
            self._put(key, json.dumps(event).encode(), IfNoneMatch="*")

    def _record(self, name: str, action: str, actor: str | None, **fields: Any) -> None:
        doc, _ = self._read_deployment(name)
        event = new_event(action, actor, fields)
        stem = f"{int(doc.get('revision', 0)):012d}-b-{event['at']}-{uuid.uuid4().hex[:8]}"
        self._put(self._key(name, "history", stem + ".json"), json.dumps(event).encode())

    def write_deployment_copy(self, name: str, deployment: dict[str, Any], events: list) -> None:
        """Write deployment and history of a copied model (`serving store copy`)."""
        for index, event in enumerate(events):
            key = self._key(name, "history", f"{0:012d}-c-{index:08d}.json")
            self._put(key, json.dumps(event).encode(), IfNoneMatch="*")
        body = json.dumps(deployment, indent=2, sort_keys=True).encode() + b"\n"
        if self._put(self._key(name, DEPLOYMENT), body, IfNoneMatch="*") is None:
            raise StoreError(f"{name} already has a deployment in {self.location}")


def _referenced(doc: dict[str, Any]) -> set[int]:
    """Every version a deployment document serves: aliases, route variants, shadows."""
    versions = {int(v) for v in (doc.get("aliases") or {}).values()}
    versions.update(int(v) for v in (doc.get("shadows") or {}).values())
    for route in (doc.get("routes") or {}).values():
        versions.update(int(v["version"]) for v in route.get("variants", []))
    return versions


def _is_metadata_key(key: str) -> bool:
    head, _, rest = key.partition("/")
    return head.isdigit() and rest == METADATA


def _never(artifact: str, target: Path) -> None:  # pragma: no cover (the cache holds it)
    raise StoreError("the cached version vanished")
