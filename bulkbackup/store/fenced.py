"""Writes that cannot forget the lock: every write through a FencedStore is fenced.

A fence is what a writer must still hold for its writes to land: the user's lock in a run, or
just "not interrupted" for `bulkbackup sync`. `check()` is cheap and runs before each write
starts (it raises to abandon the work early); `confirm()` asks the source of truth (Redis) and
runs right before the write commits (see Store's ``before_commit``): a writer that paused past
its lock's TTL during an upload has its write aborted, not landed over a newer one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

from bulkbackup import faults
from bulkbackup.errors import Interrupted
from bulkbackup.store.base import Head, Store
from bulkbackup.store.listing import ObjectInfo


class Fence(Protocol):
    def check(self) -> None:
        """Raise (LockLost, Interrupted) unless writing may go on."""

    def confirm(self) -> None:
        """Raise unless a write may commit now (for a lock: asks Redis, extends the lock)."""


class StopFence:
    """The fence of work without a lock: it only stops when ``stop`` is set."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()

    def check(self) -> None:
        if self.stop.is_set():
            raise Interrupted("stopping")

    def confirm(self) -> None:
        self.check()


class FencedStore:
    """A store whose writes check the fence first and confirm it at their commit.

    Reads pass through. This is the only way the backup job reaches the store.
    """

    def __init__(self, store: Store, fence: Fence) -> None:
        self._store = store
        self.fence = fence

    # -- writes ------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str]) -> None:
        self.fence.check()
        self._store.put_file(key, path, metadata, before_commit=self.fence.confirm)
        faults.after_write()

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self.fence.check()
        self._store.put_bytes(key, data, metadata, before_commit=self.fence.confirm)
        faults.after_write()

    def replace_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        self.fence.check()
        self._store.replace_metadata(key, metadata, before_commit=self.fence.confirm)
        faults.after_write()

    def copy(self, src: str, dest: str) -> None:
        self.fence.check()
        self._store.copy(src, dest, before_commit=self.fence.confirm)
        faults.after_write()

    def delete(self, key: str) -> None:
        self.fence.check()
        self._store.delete(key, before_commit=self.fence.confirm)
        faults.after_write()

    # -- reads -------------------------------------------------------------------------------

    def head(self, key: str) -> Head | None:
        return self._store.head(key)

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        return self._store.open(key, start, end)

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        return self._store.list(prefix, shallow)

    def local_path(self, key: str) -> Path | None:
        return self._store.local_path(key)
