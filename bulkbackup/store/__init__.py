"""The durable store: a local folder (the embedded default) or an S3-compatible bucket."""

from __future__ import annotations

from bulkbackup.config import StoreSettings
from bulkbackup.store.base import Head, ObjectInfo, Store

__all__ = ["Head", "ObjectInfo", "Store", "clean_stale_temp", "open_store"]


def open_store(settings: StoreSettings, threads: int = 1) -> Store:
    """The store named by ``settings.url``: ``s3://BUCKET`` or a local folder path.

    ``threads`` is how many threads of this process will use it (sizes connection pools).
    Call it in the process that uses the store: clients are not shareable across processes.
    """
    if settings.url.startswith("s3://"):
        from bulkbackup.store.s3 import S3Store

        return S3Store(settings, threads=threads)
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
