"""The durable store interface that every backend implements identically.

Keys are '/'-separated like S3 keys (`<login>`, `<login>/<repo>.bundle`). Metadata is a flat
mapping of ASCII names to short strings; names are case-insensitive on read, so readers get
them lower-cased (S3 lower-cases them anyway).
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from bulkbackup.errors import StoreError
from bulkbackup.store.casefold import top_ignoring_case
from bulkbackup.store.listing import ObjectInfo

# Storj rejects user metadata above 2 KiB; keep a margin for names and encoding.
METADATA_LIMIT_BYTES = 1900


@dataclass(frozen=True)
class Head:
    """An object's size, time and metadata (names lower-cased); ``version`` tells this
    version of the object from any other (S3's ETag; the local store's inode and time;
    "" where the store has none): a download reads the version it was described by."""

    size: int
    last_modified: datetime
    metadata: dict[str, str]
    version: str = ""

    def get(self, name: str, default: str = "") -> str:
        return self.metadata.get(name.lower(), default)


def check_key(key: str) -> str:
    """Refuse keys that could escape the store or collide with a backend's own files."""
    if not key or key.startswith("/") or key.endswith("/") or "\x00" in key:
        raise StoreError(f"invalid store key: {key!r:.200}")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise StoreError(f"invalid store key: {key!r:.200}")
    return key


def check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise StoreError(f"invalid byte range: {start} to {end}")


def clean_value(value: str) -> str:
    """A metadata value as every backend can keep it: ASCII (others escaped), one line."""
    text = str(value).encode("ascii", "backslashreplace").decode("ascii")
    return " ".join(text.split()) if any(c < " " for c in text) else text


def metadata_bytes(metadata: Mapping[str, str]) -> int:
    """The size that counts against METADATA_LIMIT_BYTES (of cleaned metadata)."""
    return sum(len(k) + len(v) for k, v in metadata.items())


def clean_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Make metadata safe for every backend: ASCII, one line; metadata over Storj's size
    limit is refused (StoreError): shortening a value is the writer's choice, not the
    store's (the archive shortens its `Error`: archive/metadata.py)."""
    out: dict[str, str] = {}
    for name, value in metadata.items():
        if not name.isascii() or not name.replace("-", "").isalnum():
            raise StoreError(f"invalid metadata name: {name!r}")
        out[name] = clean_value(value)
    size = metadata_bytes(out)
    if size > METADATA_LIMIT_BYTES:
        raise StoreError(f"metadata of {size} bytes exceeds the store limit "
                         f"({METADATA_LIMIT_BYTES})")
    return out


#: Content-Types by the extension of a key's last part.
CONTENT_TYPES = {".bundle": "application/x-git-bundle", ".zip": "application/zip",
                 ".json": "application/json"}


def content_type(key: str) -> str:
    """The Content-Type of an object, from its key alone (so a metadata-replacing copy can
    set it again without asking the store): a top-level object (a key without '/') is a
    JSON document, others go by their extension (CONTENT_TYPES), else octet-stream."""
    if "/" not in key:
        return "application/json"
    name = key.rsplit("/", 1)[1]
    ext = name[name.rfind("."):] if "." in name else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


#: Called right before a write becomes visible; raising aborts the write (nothing appears).
BeforeCommit = Callable[[], None]


def no_fence() -> None:
    """The default before_commit: nothing to confirm."""


class Store(abc.ABC):
    """A bucket of objects with metadata. One instance per process (clients are not shared).

    Every write takes a ``before_commit`` callback, called once the data is uploaded and just
    before the object (or its new metadata) becomes visible: the local store's rename, S3's
    PutObject, CompleteMultipartUpload or CopyObject (before every attempt of that request,
    retries included). If it raises, the write is aborted, nothing of it is left behind, and
    the exception propagates. The run uses it to confirm the user's lock (see FencedStore).
    """

    #: True when listings come in byte order of keys (S3); False when the backend only
    #: promises that a user's objects (`<login>` then `<login>/...`) come together.
    byte_ordered: bool = True

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, metadata: Mapping[str, str],
                 before_commit: BeforeCommit = no_fence) -> None:
        """Upload a local file, streamed; the object appears whole or not at all."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                  before_commit: BeforeCommit = no_fence) -> None:
        """Store ``data``; the object appears whole or not at all."""

    @abc.abstractmethod
    def replace_metadata(self, key: str, metadata: Mapping[str, str],
                         before_commit: BeforeCommit = no_fence) -> None:
        """Replace all metadata of an existing object without re-uploading its data."""

    @abc.abstractmethod
    def copy(self, src: str, dest: str, before_commit: BeforeCommit = no_fence) -> None:
        """Copy ``src`` with its metadata to ``dest`` inside the store (S3: server-side, no
        bytes through this process); raises NotFound when ``src`` does not exist."""

    @abc.abstractmethod
    def delete(self, key: str, before_commit: BeforeCommit = no_fence) -> None:
        """Remove ``key`` (nothing happens when it does not exist)."""

    @abc.abstractmethod
    def head(self, key: str) -> Head | None:
        """Size, time and metadata of ``key``, or None when it does not exist."""

    @abc.abstractmethod
    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A stream of the object's bytes ``start`` to ``end`` (exclusive; None: to the end),
        clamped to its size; raises NotFound. The caller closes it."""

    @abc.abstractmethod
    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        """Every key starting with ``prefix``, streamed page by page; ``shallow``: only those
        without a further '/' (S3's delimiter: a folder below costs nothing)."""

    @abc.abstractmethod
    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The top-level objects (keys without '/': the usernames) starting with ``prefix``,
        streamed."""

    def top_ignoring_case(self, prefix: str, limit: int, whole: bool = False
                          ) -> tuple[builtins.list[str], bool]:
        """The users (top-level keys) whose login starts with ``prefix`` ignoring case
        (``whole``: is ``prefix`` ignoring case), in byte order, at most ``limit``; and whether
        there may be more. Bounded listings: see store/casefold.py."""
        return top_ignoring_case(self, prefix, limit, whole)

    def local_path(self, key: str) -> Path | None:
        """A file holding ``key``'s data that can be read in place (the local store), or
        None (S3: download it). Readers must not write to it."""
        return None

    def presigned_url(self, key: str, expires_s: int, file_name: str = "") -> str | None:
        """A URL that downloads ``key`` without credentials, saved as ``file_name`` (default:
        the key's last part), or None when the store has none (the local store)."""
        return None

    def read_bytes(self, key: str) -> bytes:
        """The whole object in memory (small objects only: the user object, tests)."""
        with self.open(key) as f:
            return f.read()

    def clean_stale_temp(self) -> int:
        """Remove what killed writers left behind; how many were removed (S3: none, an
        aborted or abandoned multipart upload is not an object, and the bucket's lifecycle
        rule for incomplete uploads removes it)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Return once every write made so far has landed; raise the failure of one that
        did not. Only a store that sends writes in the background (a remote worker's:
        run/remote_store.py) has any pending; the others' writes return once landed."""

    def cancel_pending(self) -> Exception | None:
        """Drop the writes not yet started, wait for one being sent; return the failure
        of a write in the background, if one failed (see ``flush``)."""
        return None

    @property
    def request_count(self) -> int:
        """Store requests made by this instance (for stats and benchmarks)."""
        return 0
