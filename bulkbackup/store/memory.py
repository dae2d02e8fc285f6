"""The durable store held in this process's memory: for tests and tools that need a Store
without a folder or a bucket. It keeps S3's semantics (the contract's model): keys in byte
order, a key and keys below it may coexist, metadata names read back lower-cased.

Nothing survives the process; instances do not share objects.
"""

from __future__ import annotations

import bisect
import io
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from bulkbackup.config import StoreSettings
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.store.base import (
    BeforeCommit,
    Head,
    Store,
    check_key,
    check_range,
    clean_metadata,
    no_fence,
)
from bulkbackup.store.listing import ObjectInfo

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Object:
    data: bytes
    metadata: dict[str, str]  # as written (cleaned); lower-cased on read, as S3 does
    last_modified: datetime


class MemoryStore(Store):
    byte_ordered = True  # str order is code-point order, the byte order of UTF-8 keys (S3's)

    def __init__(self, settings: StoreSettings | None = None) -> None:
        settings = settings or StoreSettings(url="memory")
        self._page_size = max(settings.list_page_size, 1)
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # sorted: listings page through it as S3 does (start-after)
        self._lock = threading.Lock()
        self._requests = 0

    @property
    def request_count(self) -> int:
        return self._requests

    def _count(self) -> None:
        with self._lock:
            self._requests += 1

    # -- writes ------------------------------------------------------------------------------

    def _commit(self, key: str, obj: _Object, before_commit: BeforeCommit) -> None:
        """Make ``obj`` visible at ``key`` whole, unless ``before_commit`` raises."""
        before_commit()
        with self._lock:
            if key not in self._objects:
                bisect.insort(self._keys, key)
            self._objects[key] = obj

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str],
                 before_commit: BeforeCommit = no_fence) -> None:
        meta = clean_metadata(metadata)
        check_key(key)
        self._count()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot store {key!r}: {exc.strerror or exc}") from None
        self._commit(key, _Object(data, meta, datetime.now(UTC)), before_commit)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                  before_commit: BeforeCommit = no_fence) -> None:
        meta = clean_metadata(metadata)
        check_key(key)
        self._count()
        self._commit(key, _Object(bytes(data), meta, datetime.now(UTC)), before_commit)

    def _get(self, key: str) -> _Object:
        check_key(key)
        self._count()
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"no such object: {key!r}")
        return obj

    def replace_metadata(self, key: str, metadata: Mapping[str, str],
                         before_commit: BeforeCommit = no_fence) -> None:
        meta = clean_metadata(metadata)
        obj = self._get(key)
        # A new time, as S3's copy onto itself gives (listings use it as the sync time).
        self._commit(key, _Object(obj.data, meta, datetime.now(UTC)), before_commit)

    def copy(self, src: str, dest: str, before_commit: BeforeCommit = no_fence) -> None:
        check_key(dest)
        obj = self._get(src)
        self._commit(dest, _Object(obj.data, dict(obj.metadata), datetime.now(UTC)),
                     before_commit)

    def delete(self, key: str, before_commit: BeforeCommit = no_fence) -> None:
        check_key(key)
        self._count()
        before_commit()
        with self._lock:
            if self._objects.pop(key, None) is not None:
                self._keys.pop(bisect.bisect_left(self._keys, key))

    # -- reads -------------------------------------------------------------------------------

    def head(self, key: str) -> Head | None:
        try:
            obj = self._get(key)
        except NotFound:
            return None
        return Head(size=len(obj.data), last_modified=obj.last_modified,
                    metadata={k.lower(): v for k, v in obj.metadata.items()})

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_range(start, end)
        data = self._get(key).data
        return io.BytesIO(data[start:end])

    # -- listings ----------------------------------------------------------------------------

    def _page(self, after: str | None, prefix: str) -> tuple[list[str], bool]:
        """Up to a page of keys starting with ``prefix``, after ``after`` (S3's StartAfter),
        and whether more follow (S3's IsTruncated: no request for an empty last page)."""
        self._count()
        with self._lock:
            i = (bisect.bisect_left(self._keys, prefix) if after is None
                 else bisect.bisect_right(self._keys, after))
            page: list[str] = []
            while i < len(self._keys) and self._keys[i].startswith(prefix):
                if len(page) == self._page_size:
                    return page, True
                page.append(self._keys[i])
                i += 1
            return page, False

    def _infos(self, keys: list[str]) -> Iterator[ObjectInfo]:
        for key in keys:
            with self._lock:
                obj = self._objects.get(key)
            if obj is not None:  # deleted since its page was read
                yield ObjectInfo(key, len(obj.data), obj.last_modified)

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        after: str | None = None
        while True:
            page, more = self._page(after, prefix)
            # Shallow: as S3's delimiter, leaving out keys below a further '/' (S3 would count
            # each such folder once in a page; only the request count can differ).
            yield from self._infos([k for k in page
                                    if not shallow or "/" not in k[len(prefix):]])
            if not more:
                return
            after = page[-1]

    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if "/" in prefix:
            return iter(())
        return self.list(prefix, shallow=True)

    def read_bytes(self, key: str) -> bytes:
        return self._get(key).data
