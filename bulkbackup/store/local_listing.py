"""The local store's listings: a user's folder read in key order, the top folder streamed
(it may hold millions of users), and pages counted as S3 would count them. Also the names:
key segments `%`-encoded so the backend's own files (`%object`, `%meta`, `%incoming`) never
collide with a key."""

from __future__ import annotations

import builtins
import heapq
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bulkbackup.errors import StoreError, one_line
from bulkbackup.store.listing import ObjectInfo

OBJECT = "%object"
_RESERVED = re.compile(r"%(?!25)")


def encode_segment(segment: str) -> str:
    return segment.replace("%", "%25")


def decode_segment(name: str) -> str | None:
    """The key segment stored under ``name``, or None for the backend's own files."""
    if _RESERVED.search(name):
        return None
    return name.replace("%25", "%")


def os_error_line(exc: OSError) -> str:
    # strerror alone: the path is already in every message, and only once.
    return exc.strerror or one_line(exc)


def file_version(st: os.stat_result) -> str:
    """Head.version of a stored file: a write replaces it by rename (a new inode)."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def file_time(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)



class FolderListing:
    """The listing half of LocalStore (a mixin: it needs the store's root, page size and
    request counter)."""

    root: Path
    _page_size: int

    def _count(self, n: int = 1) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        infos = self._list(prefix, deep=not shallow)
        if shallow:
            infos = (i for i in infos if "/" not in i.key[len(prefix):])
        return self._paged(infos)

    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._paged(self._list_top(prefix))

    def top_ignoring_case(self, prefix: str, limit: int, whole: bool = False
                          ) -> tuple[builtins.list[str], bool]:
        """One read of the top folder (a prefix listing here reads it whole anyway): names
        compared first, only matching folders looked into; the ``limit`` first kept."""
        want = prefix.lower()
        self._count()
        matches = (login for login, folder in self._users("")
                   if (login.lower() == want if whole else login.lower().startswith(want))
                   and (folder / OBJECT).is_file())
        first = heapq.nsmallest(limit + 1, matches)
        return first[:limit], len(first) > limit

    def _paged(self, infos: Iterator[ObjectInfo]) -> Iterator[ObjectInfo]:
        """Count a listing as S3 would: one request per page of ``list_page_size`` keys.

        Directory reads are not counted: they are local system calls, not store requests.
        """
        self._count()
        for n, info in enumerate(infos):
            if n and n % self._page_size == 0:
                self._count()  # the first key of a further page
            yield info

    def _list(self, prefix: str, deep: bool = True) -> Iterator[ObjectInfo]:
        if "/" not in prefix:
            for login, folder in self._users(prefix):
                yield from self._user_objects(login, folder, include_own=True, deep=deep)
            return
        login, _, rest = prefix.partition("/")
        parents = [login, *rest.split("/")[:-1]]
        if any(s in ("", ".", "..") or "\x00" in s for s in parents):
            return  # no valid key can start with it
        folder = self.root.joinpath(*(encode_segment(s) for s in parents))
        yield from (info for info in self._user_objects("/".join(parents), folder, False, deep)
                    if info.key.startswith(prefix))

    def _list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for login, folder in self._users(prefix):
            try:
                st = os.stat(folder / OBJECT)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StoreError(f"cannot list {login!r}: {os_error_line(exc)}") from None
            if stat.S_ISREG(st.st_mode):
                yield ObjectInfo(login, st.st_size, file_time(st))

    def _users(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """User folders whose login starts with ``prefix``, in directory order, streamed:
        the top level may hold millions of entries, so it is never read whole or sorted."""
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    login = decode_segment(entry.name)
                    if login is None or not login.startswith(prefix):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        yield login, Path(entry.path)
        except OSError as exc:
            raise StoreError(f"cannot list the store: {os_error_line(exc)}") from None

    def _user_objects(self, base_key: str, folder: Path, include_own: bool, deep: bool = True
                      ) -> Iterator[ObjectInfo]:
        """The objects below ``folder`` (key ``base_key``) in key order, own object first;
        not ``deep``: only those directly in it."""
        found: list[ObjectInfo] = []
        own: ObjectInfo | None = None
        try:
            pending = [(folder, base_key)]
            while pending:
                current, key_prefix = pending.pop()
                with os.scandir(current) as entries:
                    for entry in entries:
                        if entry.name == OBJECT and current == folder:
                            if include_own and entry.is_file(follow_symlinks=False):
                                st = entry.stat(follow_symlinks=False)
                                own = ObjectInfo(base_key, st.st_size, file_time(st))
                            continue
                        segment = decode_segment(entry.name)
                        if segment is None:
                            continue
                        key = f"{key_prefix}/{segment}"
                        if entry.is_dir(follow_symlinks=False):
                            if deep:
                                pending.append((Path(entry.path), key))
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            found.append(ObjectInfo(key, st.st_size, file_time(st)))
        except (FileNotFoundError, NotADirectoryError):
            pass  # the folder went away (or never was): nothing below it
        except OSError as exc:
            raise StoreError(f"cannot list {base_key!r}: {os_error_line(exc)}") from None
        if own is not None:
            yield own
        # Python orders str by code point, which is the byte order of UTF-8 keys (as S3).
        found.sort(key=lambda info: info.key)
        yield from found
