"""One user's stored archives for the user page, at a bounded cost to the store.

`show`'s describe() reads one HEAD per repository. On a public page that would let anyone
make the store answer thousands of requests per view, one after the other; so here the HEADs
of a user run in parallel (HEAD_THREADS), a result is reused for CACHE_S, and the app lets
only a few users be described at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import orjson

from bulkbackup.archive import layout
from bulkbackup.errors import BulkbackupError, NotFound, StoreError
from bulkbackup.names import is_archive_name
from bulkbackup.passes.show import describe
from bulkbackup.store import Head, ObjectInfo, Store

HEAD_THREADS = 8
CACHE_S = 30.0
CACHE_USERS = 64
# Users' object HEADs kept for the users list's rows without a summary in Redis.
CACHE_HEADS = 4096
# The stored repository list is read for descriptions only up to this size.
OBJECT_READ_MAX_BYTES = 8 * 1024 * 1024


class _Prefetching:
    """The store as describe() uses it (list, then a HEAD per bundle), with the HEADs of a
    listing's bundles started in parallel as soon as the listing is read."""

    def __init__(self, store: Store, pool: ThreadPoolExecutor) -> None:
        self._store = store
        self._pool = pool
        self._heads: dict[str, Future[Head | None]] = {}

    def head(self, key: str) -> Head | None:
        pending = self._heads.pop(key, None)
        return pending.result() if pending is not None else self._store.head(key)

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        infos = list(self._store.list(prefix, shallow))
        for info in infos:
            key = layout.parse_key(info.key)
            if key.kind is layout.Kind.BUNDLE and is_archive_name(key.repo):  # describe()'s
                self._heads[info.key] = self._pool.submit(self._store.head, info.key)
        return iter(infos)

    def drain(self) -> None:
        for pending in self._heads.values():
            pending.cancel()


class StoredUsers:
    """describe() and the repositories' descriptions, per user, reused for CACHE_S."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(HEAD_THREADS, thread_name_prefix="head")
        self._mu = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, dict[str, Any] | None, dict[str, str]]] = (
            OrderedDict())
        self._heads: OrderedDict[str, tuple[float, Head | None]] = OrderedDict()

    def heads(self, store: Store, logins: list[str]) -> dict[str, Head | None]:
        """The user objects' HEADs (None: not stored), read in parallel, reused for CACHE_S:
        a page of the users list costs at most one HEAD per row."""
        now = time.monotonic()
        out: dict[str, Head | None] = {}
        with self._mu:
            for login in logins:
                hit = self._heads.get(login)
                if hit is not None and hit[0] > now:
                    out[login] = hit[1]
        missing = [x for x in logins if x not in out]
        pending = [self._pool.submit(store.head, layout.user_key(x)) for x in missing]
        try:
            fresh = [p.result() for p in pending]
        finally:
            for p in pending:
                p.cancel()
        with self._mu:
            for login, head in zip(missing, fresh, strict=True):
                out[login] = head
                self._heads[login] = (now + CACHE_S, head)
                self._heads.move_to_end(login)
            while len(self._heads) > CACHE_HEADS:
                self._heads.popitem(last=False)
        return out

    def get(self, store: Store, login: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """(`show --json`'s object or None when the store has no such user, descriptions)."""
        now = time.monotonic()
        with self._mu:
            hit = self._cache.get(login)
            if hit is not None and hit[0] > now:
                return hit[1], hit[2]
        user = self._describe(store, login)
        descriptions = _descriptions(store, login) if user and user["repositories"] else {}
        with self._mu:
            self._cache[login] = (now + CACHE_S, user, descriptions)
            self._cache.move_to_end(login)
            while len(self._cache) > CACHE_USERS:
                self._cache.popitem(last=False)
        return user, descriptions

    def _describe(self, store: Store, login: str) -> dict[str, Any] | None:
        proxy = _Prefetching(store, self._pool)
        try:
            user = describe(cast(Store, proxy), login)
        except NotFound:
            return None
        except StoreError:
            raise  # the store failing is not the user missing
        except BulkbackupError:  # describe's "not in the store"
            return None
        finally:
            proxy.drain()
        return user  # repositories with valid names only: describe() leaves the others out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _descriptions(store: Store, login: str) -> dict[str, str]:
    """Repository name -> description, from the stored listing (read up to a bound)."""
    head = store.head(login)
    if head is None or head.size > OBJECT_READ_MAX_BYTES:
        return {}
    try:
        with store.open(login) as f:
            doc = orjson.loads(f.read(OBJECT_READ_MAX_BYTES + 1))
    except (NotFound, orjson.JSONDecodeError):
        return {}
    out: dict[str, str] = {}
    if isinstance(doc, list):
        for entry in doc:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                text = entry.get("description")
                if isinstance(text, str) and text:
                    out[entry["name"][:100]] = text[:500]
    return out
