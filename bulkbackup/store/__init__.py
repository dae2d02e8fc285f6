"""The durable store: a local folder (the embedded default) or an S3-compatible bucket."""

from __future__ import annotations

from pathlib import Path

from bulkbackup.config import StoreSettings, store_scheme
from bulkbackup.errors import ConfigError
from bulkbackup.store.base import Head, Store
from bulkbackup.store.listing import ObjectInfo

__all__ = ["Head", "ObjectInfo", "Store", "clean_stale_temp", "open_store"]


def open_store(settings: StoreSettings, threads: int = 1, create: bool = True) -> Store:
    """The store named by ``settings.url``: ``s3://BUCKET`` or a local folder path.

    ``threads`` is how many threads of this process will use it (sizes connection pools).
    ``create=False`` opens it read-only: a missing bucket or folder is a ConfigError, never
    created (`show`, `stats --no-write`). Call it in the process that uses the store:
    clients are not shareable across processes.
    """
    if store_scheme(settings.url) == "s3":
        from bulkbackup.store.s3 import S3Store

        return S3Store(settings, threads=threads, create=create)
    if not create and not Path(settings.url).expanduser().is_dir():
        raise ConfigError(f"store folder {settings.url} does not exist")
    from bulkbackup.store.local import LocalStore

    return LocalStore(settings)


def clean_stale_temp(settings: StoreSettings) -> int:
    """Remove the temp files that killed writers left in the store (only those no live process
    owns); how many. Call it where a run starts, before its workers: S3 needs nothing (an
    aborted multipart upload leaves nothing; one a killed process left is a lifecycle rule's).
    """
    if settings.url.startswith("s3://"):
        return 0
    from bulkbackup.store.local import LocalStore

    return LocalStore(settings).clean_stale_temp()
