"""A Store whose objects are a leased user's, through `serve`'s lease API (run/lease_client.py):
what a remote worker's UserBackup writes to, wrapped in its FencedStore as a local store is.

Each key names its user (archive/layout.parse_key): the request goes to that user's lease.
The fence is the server's (it confirms the lease before each commit); ``before_commit`` runs
here before the request is sent, so a fence known lost stops the upload before it starts.

Fewer round trips: a sync first reads its user object's head, then lists the user's archives
(shallow), then heads each archive it is about to replace. The head of the user object is one
`state` request that brings the listing too; until this process writes below the user, the
listing is answered from it, and the head of an archive it neither lists nor wrote since is
None without a request. Only the lease's holder creates a user's archives (every write is
fenced by the lease), so what it lists stays true while the lease is held: the worker
forgets it when it is done with the user (RemoteQueue.drop), and it is not used once
KNOWN_FOR_S old.

With ``uploads`` (a worker's: run/uploads.py) a file's upload is sent in the background and
`put_file` returns once it is handed over. Every other write first waits for the pending
uploads (the writes land in the order they were made), so does a read of a key (or a listing
of a prefix) with one pending, and the failure of one is raised by the next call (the user
fails, as if it had been synchronous). `flush` and `cancel_pending` are what the user's sync calls
before its user is completed, given back or dropped (backup/user_backup.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bulkbackup.archive import layout
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.run.lease_client import LeaseClient
from bulkbackup.run.uploads import Upload, Uploads
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

# How long a state read answers for its user (a bound on staleness, not a lease rule).
KNOWN_FOR_S = 60.0


def _login(key: str) -> str:
    return layout.parse_key(check_key(key)).login


@dataclass
class _Known:
    """What a state read said of one user: the shallow listing of its archives."""

    at: float
    prefix: str
    objects: list[ObjectInfo]
    names: frozenset[str]
    # Keys this process wrote (or deleted) since: not known any more; the listing is old.
    written: set[str] = field(default_factory=set)


class RemoteStore(Store):
    """Writes and reads of leased users' keys, carried by the server."""

    def __init__(self, client: LeaseClient, uploads: Uploads | None = None) -> None:
        self.client = client
        self.uploads = uploads  # None: every write is synchronous
        self._requests = 0
        self._mu = threading.Lock()
        self._known: dict[str, _Known] = {}  # login -> its last state read

    def forget(self, login: str) -> None:
        """Done with ``login`` (completed, given back, lost): its state read is dropped."""
        with self._mu:
            self._known.pop(login, None)

    def _fresh(self, login: str) -> _Known | None:
        with self._mu:
            known = self._known.get(login)
            if known is not None and time.monotonic() - known.at > KNOWN_FOR_S:
                del self._known[login]
                return None
            return known

    def _wrote(self, key: str) -> str:
        """The login of ``key``, whose listing is no longer what was read."""
        login = _login(key)
        with self._mu:
            if (known := self._known.get(login)) is not None:
                known.written.add(key)
        return login

    def _absent(self, key: str, login: str) -> bool:
        """Known not to exist: a direct child of the user's listed prefix, neither listed
        nor written since."""
        known = self._fresh(login)
        if known is None or not key.startswith(known.prefix):
            return False
        rest = key[len(known.prefix):]
        return (bool(rest) and layout.SEPARATOR not in rest and key not in known.names
                and key not in known.written)

    # -- the background uploads (see the module) ---------------------------------------------

    def flush(self) -> None:
        if self.uploads is not None:
            self.uploads.flush()

    def cancel_pending(self) -> Exception | None:
        return self.uploads.cancel() if self.uploads is not None else None

    def close(self) -> None:
        if self.uploads is not None:
            self.uploads.close()
            self.uploads.client.close()
        self.client.close()

    def _settled(self, key: str = "", below: bool = False) -> None:
        """Before a request: an upload's failure is raised; before a write (no ``key``), or a
        read of ``key`` (``below``: of keys below it) while one is pending, the pending
        uploads are waited for."""
        if self.uploads is None:
            return
        self.uploads.check()
        if not key or self.uploads.pending(key, below):
            self.uploads.flush()

    # -- writes ------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str],
                 before_commit: BeforeCommit = no_fence) -> None:
        if self.uploads is None:
            before_commit()
            self._requests += 1
            self.client.put(self._wrote(key), key, path, metadata)
            return
        self.uploads.check()
        meta = clean_metadata(metadata)  # refused here, as a synchronous put refuses it
        before_commit()  # a lease known lost: not handed over
        try:
            # Read from this descriptor: the caller may delete the file once we return.
            file = path.open("rb")
        except OSError as exc:
            raise StoreError(f"cannot read {path.name}: {exc.strerror}") from None
        self._requests += 1
        self.uploads.submit(Upload(self._wrote(key), key, file, meta, before_commit))

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                  before_commit: BeforeCommit = no_fence) -> None:
        self._settled()
        before_commit()
        self._requests += 1
        self.client.put(self._wrote(key), key, bytes(data), metadata)

    def replace_metadata(self, key: str, metadata: Mapping[str, str],
                         before_commit: BeforeCommit = no_fence) -> None:
        self._settled()
        before_commit()
        self._requests += 1
        self.client.replace_metadata(self._wrote(key), key, metadata)

    def copy(self, src: str, dest: str, before_commit: BeforeCommit = no_fence) -> None:
        self._settled()
        before_commit()
        self._requests += 1
        if not self.client.copy(self._wrote(dest), src, dest):
            raise NotFound(f"no such object: {src}")

    def delete(self, key: str, before_commit: BeforeCommit = no_fence) -> None:
        self._settled()
        before_commit()
        self._requests += 1
        self.client.delete(self._wrote(key), key)

    # -- reads -------------------------------------------------------------------------------

    def head(self, key: str) -> Head | None:
        login = _login(key)
        if key == layout.user_key(login):
            return self._state(login)
        if self._absent(key, login):
            return None
        self._settled(key)
        self._requests += 1
        return self.client.head(login, key)

    def _state(self, login: str) -> Head | None:
        """The user object's head, with the listing of its archives kept (see the module)."""
        self._settled(login, below=True)
        self._requests += 1
        got = self.client.state(login)
        with self._mu:
            if got.objects is None:
                self._known.pop(login, None)
            else:
                self._known[login] = _Known(time.monotonic(), layout.user_prefix(login),
                                            got.objects, frozenset(o.key for o in got.objects))
        return got.user

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Streamed as it is read: a bundle header costs its bytes, not the pack's."""
        check_range(start, end)
        self._settled(key)
        self._requests += 1
        stream = self.client.open(_login(key), key, start, end)
        if stream is None:
            raise NotFound(f"no such object: {key}")
        return stream

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        login = prefix.partition(layout.SEPARATOR)[0]
        if not login or not prefix.startswith(layout.user_prefix(login)):
            raise StoreError("a remote worker lists below one leased user only")
        known = self._fresh(login)
        if shallow and known is not None and not known.written and prefix == known.prefix:
            yield from list(known.objects)
            return
        self._settled(prefix, below=True)
        self._requests += 1
        yield from self.client.list(login, prefix, shallow)

    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise StoreError("a remote worker does not list users")

    @property
    def request_count(self) -> int:
        return self._requests
