"""Opening the store a setting names: a local directory, or `s3://BUCKET/PREFIX`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from serving.store.base import StoreBase
from serving.store.model_store import ModelStore

if TYPE_CHECKING:
    from serving.settings import Settings

DEFAULT_CACHE_BYTES = 10 * 1024**3


def is_remote(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def open_store(
    location: str | Path,
    cache_dir: Path | None = None,
    cache_max_bytes: int = DEFAULT_CACHE_BYTES,
    serve_cached: bool = False,
) -> StoreBase:
    """The store at `location`; an object store keeps downloads in `cache_dir`.

    `serve_cached` (workers only): while the object store is unreachable, list and read the
    deployments last seen from the cache, so a replica started during an outage serves what
    this machine has cached.
    """
    if is_remote(location):
        from serving.store.s3_store import S3Store  # boto3: only for object stores

        return S3Store(
            str(location),
            Path(cache_dir) if cache_dir else Path("data") / "cache",
            cache_max_bytes,
            serve_cached=serve_cached,
        )
    return ModelStore(Path(location))


def store_from_settings(settings: Settings, serve_cached: bool = False) -> StoreBase:
    """The model store the settings name (workers pass serve_cached=True)."""
    store = open_store(
        settings.model_store, settings.store_cache_dir, settings.cache_max_bytes, serve_cached
    )
    store.record_created_by = settings.record_created_by
    return store
