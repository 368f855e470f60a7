"""A machine's cache of versions downloaded from an object store, shared by its workers.

Layout:  <cache>/<name>/<version>/{<artifact>,metadata.json}   complete and verified, or absent
         <cache>/<name>/deployment.json                        the last deployment seen (outages)
A version is fetched once per machine: workers take the version's lock file, and the first one
downloads into a temp folder, checks the sha256 the metadata records, then renames the folder
into place. A bad download is deleted and tried again; after the last try the version fails to
load with the reason. `prune` keeps the cache under its byte bound by removing versions that no
deployment refers to, least recently used first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from serving.errors import StoreError
from serving.store.fsutil import atomic_write_bytes, exclusive_lock, sha256_file

log = logging.getLogger(__name__)

METADATA = "metadata.json"
DOWNLOAD_TRIES = 3
# Download one object to a local path: (object name inside the version, target path).
Fetch = Callable[[str, Path], None]


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def folder(self, name: str, version: int) -> Path:
        return self.root / name / str(int(version))

    def cached(self, name: str, version: int) -> Path | None:
        folder = self.folder(name, version)
        return folder if (folder / METADATA).is_file() else None

    def fetch(self, name: str, version: int, metadata: dict[str, Any], download: Fetch) -> Path:
        """The verified local folder of a version, downloading it first if needed."""
        done = self.cached(name, version)
        if done is not None:
            _touch(done)
            return done
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(model_dir / f".{int(version)}.lock"):
            done = self.cached(name, version)  # another worker finished it meanwhile
            if done is not None:
                return done
            problem = ""
            for attempt in range(1, DOWNLOAD_TRIES + 1):
                problem = self._download(name, version, metadata, download)
                if not problem:
                    return self.folder(name, version)
                log.warning(
                    "download of %s v%s failed (try %d of %d): %s",
                    name, version, attempt, DOWNLOAD_TRIES, problem,
                    extra={"model": name, "version": version, "event": "download_failed"},
                )  # fmt: skip
        raise StoreError(f"{name} v{version}: {problem}")

    def _download(self, name: str, version: int, metadata: dict[str, Any], download: Fetch) -> str:
        """Fetch into a temp folder and publish it; the reason on failure ('' when done)."""
        artifact = str(metadata.get("artifact") or "model.joblib")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.root / name))
        try:
            download(artifact, tmp / artifact)
            actual = sha256_file(tmp / artifact)
            if actual != metadata.get("sha256"):
                return (
                    f"the downloaded {artifact} has sha256 {actual[:12]}..., the metadata "
                    f"records {str(metadata.get('sha256'))[:12]}...: the object was changed "
                    "after publishing (refused)"
                )
            body = json.dumps(metadata, indent=2, sort_keys=True).encode()
            atomic_write_bytes(tmp / METADATA, body)
            os.rename(tmp, self.folder(name, version))
            return ""
        except OSError as exc:
            return f"cannot write the cache: {exc.strerror or exc}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- the last deployment seen, for a start during an outage -------------------------------

    def save_deployment(self, name: str, body: bytes) -> None:
        with contextlib.suppress(OSError):  # a full cache disk must not stop a poll
            (self.root / name).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.root / name / "deployment.json", body)

    def load_deployment(self, name: str) -> bytes | None:
        try:
            return (self.root / name / "deployment.json").read_bytes()
        except OSError:
            return None

    def cached_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/deployment.json"))

    # -- staying under the bound ------------------------------------------------------------

    def prune(self, referenced: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Remove unreferenced versions, oldest use first, while over the bound."""
        keep = set(referenced)
        entries = []
        for meta in self.root.glob("*/*/metadata.json"):
            folder = meta.parent
            if not folder.name.isdigit():
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append((meta.stat().st_mtime, folder, size))
        total = sum(size for _, _, size in entries)
        removed = []
        for _, folder, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            key = (folder.parent.name, int(folder.name))
            if key in keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(key)
        return removed


def _touch(folder: Path) -> None:
    with contextlib.suppress(OSError):  # the mtime of metadata.json is the last use
        os.utime(folder / METADATA)
