"""The durable store as a plain folder that operators can browse and `git clone` from.

Layout (segments `%`-encoded as `%25`, so a `%` followed by a letter marks the backend's own
files and can never collide with a key):

    <root>/<login>/%object            data of the top-level key `<login>` (the repository list)
    <root>/<login>/<repo>.bundle      data of `<login>/<repo>.bundle`
    <file>%meta                       JSON sidecar with the metadata of <file>
    <root>/%incoming/%tmp-<host>-<pid>-<random>
                                      a write in progress (or left by a killed writer:
                                      clean_stale_temp removes those)

Crash safety without extended attributes: a put writes the data to a temp file, then the
sidecar, then renames the data into place; the write's before_commit runs just before the
sidecar's rename. The sidecar names the inode, size and a content fingerprint of the data
it describes, for the new data (`cur`) and for the data still in place (`prev`), so a reader
that matches the current data file gets that data's metadata whatever the moment of a crash,
and a copied store (new inodes) still reads as the original (sidecar.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from bulkbackup.config import StoreSettings
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.store import sidecar, tempfiles
from bulkbackup.store.base import (
    BeforeCommit,
    Head,
    Store,
    check_key,
    check_range,
    clean_metadata,
    no_fence,
)
from bulkbackup.store.local_listing import (
    OBJECT,
    FolderListing,
    decode_segment,
    encode_segment,
    file_time,
    file_version,
    os_error_line,
)

_CHUNK = 1024 * 1024
# A name is one of ours (not an encoded key segment) when a `%` is not the start of `%25`.
_T = TypeVar("_T")


class _Slice(io.RawIOBase):
    """Bytes ``start`` to ``end`` of an open file."""

    def __init__(self, f: BinaryIO, start: int, end: int | None) -> None:
        self._f = f
        f.seek(start)
        self._left = None if end is None else max(end - start, 0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        data = self._f.read(want)
        buffer[: len(data)] = data
        if self._left is not None:
            self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class LocalStore(FolderListing, Store):
    byte_ordered = False

    def __init__(self, settings: StoreSettings) -> None:
        self.root = Path(settings.url).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store folder {self.root}: "
                             f"{os_error_line(exc)}") from None
        self._requests = 0
        self._page_size = max(settings.list_page_size, 1)
        self._lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        segments = [encode_segment(s) for s in check_key(key).split("/")]
        if len(segments) == 1:
            segments.append(OBJECT)
        return self.root.joinpath(*segments)

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self._requests += n

    @property
    def request_count(self) -> int:
        return self._requests

    def _guard(self, key: str, action: str, fn: Callable[[], _T]) -> _T:
        """Run one file-system operation group; OS errors become one-line StoreErrors."""
        self._count()
        try:
            return fn()
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot {action} {key!r}: {os_error_line(exc)}") from None

    # -- sidecar -----------------------------------------------------------------------------

    def _write_sidecar(self, data: Path, doc: Mapping[str, Any],
                       before_commit: BeforeCommit) -> None:
        payload = json.dumps(doc, separators=(",", ":")).encode("ascii")
        tmp = self._temp_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            before_commit()
            os.replace(tmp, sidecar.meta_path(data))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # The new sidecar must be on disk before the data rename that follows can be, or a
        # power cut could keep the new data with the old sidecar (and lose its metadata).
        sidecar.fsync_dir(data.parent)

    # -- writes ------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str],
                 before_commit: BeforeCommit = no_fence) -> None:
        def put() -> None:
            with open(path, "rb") as src:
                self._put(key, src, b"", metadata, before_commit)

        self._guard(key, "store", put)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                  before_commit: BeforeCommit = no_fence) -> None:
        self._guard(key, "store", lambda: self._put(key, None, data, metadata, before_commit))

    def _put(self, key: str, src: BinaryIO | None, data: bytes, metadata: Mapping[str, str],
             before_commit: BeforeCommit) -> None:
        meta = clean_metadata(metadata)
        dest = self._path(key)
        self._make_parent(dest)
        tmp = self._write_temp(src, data)
        try:
            with open(tmp, "rb") as written:
                entry = sidecar.new_entry(written.fileno(), meta)
            # The fence sits inside the sidecar write: from it to the data rename below
            # there are only a rename and two directory fsyncs (README: the lock fence).
            self._write_sidecar(dest, {"cur": entry, "prev": self._current_entry(dest)},
                                before_commit)
            os.replace(tmp, dest)
            sidecar.fsync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _temp_path(self) -> Path:
        return tempfiles.new_path(self.root)

    def _write_temp(self, src: BinaryIO | None, data: bytes) -> Path:
        tmp = self._temp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                if src is None:
                    f.write(data)
                else:
                    shutil.copyfileobj(src, f, _CHUNK)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _make_parent(self, dest: Path) -> None:
        created = not dest.parent.is_dir()
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"cannot store {self._key_of(dest)!r}: a parent key is an object, "
                             "not a folder") from None
        if created:
            # A new user's folder: its own entry must reach the disk too, or a power cut
            # could lose the folder with every fsynced file in it.
            sidecar.fsync_dir(dest.parent.parent)
        if dest.is_dir():
            raise StoreError(f"cannot store {self._key_of(dest)!r}: keys exist below it")

    def _key_of(self, path: Path) -> str:
        parts = [decode_segment(p) or p for p in path.relative_to(self.root).parts]
        return "/".join(p for p in parts if p != OBJECT)

    def _current_entry(self, dest: Path) -> dict[str, Any] | None:
        """The sidecar entry describing the data in place now (it becomes `prev`)."""
        try:
            st = os.stat(dest)
        except FileNotFoundError:
            return None
        return sidecar.entry_for(sidecar.read(dest), st, dest)

    def replace_metadata(self, key: str, metadata: Mapping[str, str],
                         before_commit: BeforeCommit = no_fence) -> None:
        meta = clean_metadata(metadata)
        dest = self._path(key)

        def replace() -> None:
            self._stat_file(key, dest)
            with open(dest, "rb") as data:
                entry = sidecar.new_entry(data.fileno(), meta)
            self._write_sidecar(dest, {"cur": entry, "prev": None}, before_commit)
            # S3 gives a copied object a new LastModified; listings use it as the sync time.
            os.utime(dest)

        self._guard(key, "update metadata of", replace)

    def copy(self, src: str, dest: str, before_commit: BeforeCommit = no_fence) -> None:
        source = self._path(src)

        def copy() -> None:
            try:
                f = open(source, "rb")  # noqa: SIM115 - closed below
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(f"no such object: {src!r}") from None
            with f:
                entry = sidecar.entry_for(sidecar.read(source), os.fstat(f.fileno()),
                                          f.fileno())
                meta = entry.get("meta") if entry else None
                self._put(dest, f, b"", meta if isinstance(meta, dict) else {}, before_commit)

        self._guard(dest, "copy to", copy)

    def delete(self, key: str, before_commit: BeforeCommit = no_fence) -> None:
        dest = self._path(key)

        def delete() -> None:
            before_commit()
            # Data first: a sidecar without its data is ignored, data without one is not.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(dest)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(sidecar.meta_path(dest))
            # Folders below a user's folder that this left empty go too (a chain's folder).
            parent = dest.parent
            while parent != self.root and parent.parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

        self._guard(key, "delete", delete)

    # -- leftovers ---------------------------------------------------------------------------

    def clean_stale_temp(self, max_age_s: float = tempfiles.STALE_AGE_S) -> int:
        """Remove temp files whose writer is gone: written on this host by a process that no
        longer exists, or older than ``max_age_s`` (any host: a store folder shared over
        NFS, or a pid reused since). A live writer's file is kept."""
        try:
            return tempfiles.clean(self.root, max_age_s)
        except OSError as exc:
            raise StoreError(f"cannot clean the store's temp files: {os_error_line(exc)}") from None

    # -- reads -------------------------------------------------------------------------------

    @staticmethod
    def _stat_file(key: str, path: Path) -> os.stat_result:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such object: {key!r}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"no such object: {key!r}")
        return st

    def head(self, key: str) -> Head | None:
        dest = self._path(key)

        def head() -> Head | None:
            try:
                st = self._stat_file(key, dest)
            except NotFound:
                return None
            entry = sidecar.entry_for(sidecar.read(dest), st, dest)
            raw = entry.get("meta") if entry else None
            meta = {str(k).lower(): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            return Head(size=st.st_size, last_modified=file_time(st), metadata=meta,
                        version=file_version(st))

        return self._guard(key, "read", head)

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_range(start, end)
        dest = self._path(key)

        def opener() -> BinaryIO:
            try:
                f = open(dest, "rb")  # noqa: SIM115 - the caller closes it
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(f"no such object: {key!r}") from None
            if start == 0 and end is None:
                return f
            return io.BufferedReader(_Slice(f, start, end), buffer_size=_CHUNK)

        return self._guard(key, "open", opener)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None
