"""`serving store copy SRC DST`: every model, version, deployment and history between stores.

Start on a local directory, move up to a bucket (or back down). Each version keeps its number
and metadata; its artifact is checked against the recorded sha256 before it is sent, and read
back from the destination and checked again after. A version the destination already holds
with the same sha256 is skipped, so an interrupted copy can simply be run again; a clash (same
number, other bytes) stops the copy of that model with an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from serving.errors import NotFound, StoreError
from serving.store.base import StoreBase
from serving.store.fsutil import sha256_file


@dataclasses.dataclass
class CopySummary:
    models: int = 0
    copied: int = 0
    skipped: int = 0


def copy_store(
    source: StoreBase, target: StoreBase, say: Callable[[str], None] = lambda _: None
) -> CopySummary:
    summary = CopySummary()
    for name in source.list_models():
        summary.models += 1
        for version in source.versions(name):
            if _copy_version(source, target, name, version):
                summary.copied += 1
                say(f"{name} v{version}: copied, sha256 verified")
            else:
                summary.skipped += 1
                say(f"{name} v{version}: already there (same sha256)")
        _copy_deployment(source, target, name, say)
    return summary


def _copy_version(source: StoreBase, target: StoreBase, name: str, version: int) -> bool:
    metadata = source.read_metadata(name, version)
    recorded = metadata.get("sha256")
    there = _metadata_or_none(target, name, version)
    if there is not None:
        if there.get("sha256") != recorded:
            raise StoreError(f"{name} v{version} exists in {target.location} with other bytes")
        return False
    folder = source.version_dir(name, version)
    artifact = str(metadata["artifact"])
    if sha256_file(folder / artifact) != recorded:
        raise StoreError(f"{name} v{version}: the source's artifact fails its sha256")
    target.import_version(name, version, folder, metadata)
    copied = target.version_dir(name, version) / artifact
    if sha256_file(copied) != recorded:
        raise StoreError(f"{name} v{version}: the copy in {target.location} fails its sha256")
    return True


def _metadata_or_none(store: StoreBase, name: str, version: int) -> dict | None:
    try:
        return store.read_metadata(name, version)
    except NotFound:
        return None


def _copy_deployment(
    source: StoreBase, target: StoreBase, name: str, say: Callable[[str], None]
) -> None:
    deployment = source.read_deployment(name)
    events = source.history(name)
    if not deployment.get("revision") and not events:
        return
    current = target.read_deployment(name)
    if current.get("revision"):
        if current["aliases"] != deployment["aliases"]:
            raise StoreError(
                f"{name}: {target.location} already has another deployment "
                f"({current['aliases']}); nothing changed"
            )
        return
    target.write_deployment_copy(name, deployment, events)
    aliases = ", ".join(f"{a}={v}" for a, v in sorted(deployment["aliases"].items())) or "-"
    say(f"{name}: deployment copied ({aliases}), {len(events)} history events")
