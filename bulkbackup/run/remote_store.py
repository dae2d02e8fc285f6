"""A Store whose objects are a leased user's, through `serve`'s lease API (run/lease_client.py):
what a remote worker's UserBackup writes to, wrapped in its FencedStore as a local store is.

Each key names its user (archive/layout.parse_key): the request goes to that user's lease.
The fence is the server's (it confirms the lease before each commit); ``before_commit`` runs
here before the request is sent, so a fence known lost stops the upload before it starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from bulkbackup.archive import layout
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.run.lease_client import LeaseClient
from bulkbackup.store.base import BeforeCommit, Head, Store, check_key, check_range, no_fence
from bulkbackup.store.listing import ObjectInfo


def _login(key: str) -> str:
    return layout.parse_key(check_key(key)).login


class RemoteStore(Store):
    """Writes and reads of leased users' keys, carried by the server."""

    def __init__(self, client: LeaseClient) -> None:
        self.client = client
        self._requests = 0

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str],
                 before_commit: BeforeCommit = no_fence) -> None:
        before_commit()
        self._requests += 1
        self.client.put(_login(key), key, path, metadata)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                  before_commit: BeforeCommit = no_fence) -> None:
        before_commit()
        self._requests += 1
        self.client.put(_login(key), key, bytes(data), metadata)

    def replace_metadata(self, key: str, metadata: Mapping[str, str],
                         before_commit: BeforeCommit = no_fence) -> None:
        before_commit()
        self._requests += 1
        self.client.replace_metadata(_login(key), key, metadata)

    def copy(self, src: str, dest: str, before_commit: BeforeCommit = no_fence) -> None:
        before_commit()
        self._requests += 1
        if not self.client.copy(_login(dest), src, dest):
            raise NotFound(f"no such object: {src}")

    def delete(self, key: str, before_commit: BeforeCommit = no_fence) -> None:
        before_commit()
        self._requests += 1
        self.client.delete(_login(key), key)

    def head(self, key: str) -> Head | None:
        self._requests += 1
        return self.client.head(_login(key), key)

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Streamed as it is read: a bundle header costs its bytes, not the pack's."""
        check_range(start, end)
        self._requests += 1
        stream = self.client.open(_login(key), key, start, end)
        if stream is None:
            raise NotFound(f"no such object: {key}")
        return stream

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        login = prefix.partition(layout.SEPARATOR)[0]
        if not login or not prefix.startswith(layout.user_prefix(login)):
            raise StoreError("a remote worker lists below one leased user only")
        self._requests += 1
        yield from self.client.list(login, prefix, shallow)

    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise StoreError("a remote worker does not list users")

    @property
    def request_count(self) -> int:
        return self._requests
