"""Which objects of the store make up a repository's archive, and reading them.

`archive_at` is the one function that answers it (today: the one full bundle
`<login>/<repo>.bundle`; with increments, a base bundle and a chain of increment bundles,
which `restore.build_mirror` fetches in order). Keys come from store/layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from bulkbackup.errors import ArchiveError, NotFound
from bulkbackup.progress import Progress
from bulkbackup.store import Head, Store, layout
from bulkbackup.store.base import ERROR, LAST_SYNC
from bulkbackup.timeutil import format_rfc3339, parse_rfc3339

CHUNK_BYTES = 1 << 20
MAX_USER_OBJECT_BYTES = 256 << 20


@dataclass(frozen=True)
class ArchivePart:
    """One bundle of an archive: the full base, or (later) an increment on top of it."""

    key: str
    size: int
    last_sync: str


@dataclass(frozen=True)
class RepoArchive:
    """The objects that make up one state of a repository's archive.

    ``parts`` is empty when there is no archive (a zero-byte bundle: ``error`` says why).
    """

    login: str
    repo: str
    parts: tuple[ArchivePart, ...]
    bundle_key: str  # the base bundle: where verify records its result
    bundle: Head
    zip_key: str
    has_zip: bool  # whether a zip is stored
    last_sync: str
    oldest: str  # the oldest time a restore can go back to

    @property
    def error(self) -> str:
        return self.bundle.get(ERROR)

    @property
    def empty_repository(self) -> bool:
        return not self.parts and self.error == layout.EMPTY_REPOSITORY


def latest_archive(store: Store, login: str, repo: str) -> RepoArchive:
    """The objects of the newest archive of ``login/repo``; raises ArchiveError if none."""
    key = layout.bundle_key(login, repo)
    head = store.head(key)
    if head is None:
        raise ArchiveError(f"missing object {key}")
    last_sync = head.get(LAST_SYNC)
    parts = (ArchivePart(key, head.size, last_sync),) if head.size > 0 else ()
    zip_key = layout.zip_key(login, repo)
    return RepoArchive(login, repo, parts, key, head,
                       zip_key, store.head(zip_key) is not None, last_sync, last_sync)


def archive_at(store: Store, login: str, repo: str, at: datetime | None) -> RepoArchive:
    """The archive as it was at ``at`` (None: the latest). Today only the latest exists, so a
    time before it is refused; increments will keep older states."""
    archive = latest_archive(store, login, repo)
    oldest = parse_rfc3339(archive.oldest)
    if at is not None and oldest is not None and at < oldest:
        raise ArchiveError(f"no archive at {format_rfc3339(at)}: the oldest is {archive.oldest}")
    return archive


def repositories(store: Store, login: str) -> list[str]:
    """Names of the repositories with a bundle (data or not) stored for ``login``."""
    keys = (layout.parse_key(info.key) for info in store.list(layout.user_prefix(login)))
    names = (k.repo for k in keys if k.kind is layout.Kind.BUNDLE and k.login == login)
    return sorted(n for n in names if n is not None)


def listed_branches(store: Store, login: str) -> dict[str, str]:
    """Repository name -> default branch, as the stored user object says (API data:
    only strings are kept; a branch is used only when the bundle has it)."""
    key = layout.user_key(login)
    head = store.head(key)
    if head is None or head.size > MAX_USER_OBJECT_BYTES:
        return {}
    try:
        listing = orjson.loads(store.read_bytes(key))
    except (orjson.JSONDecodeError, NotFound):
        return {}
    out: dict[str, str] = {}
    for repo in listing if isinstance(listing, list) else ():
        if isinstance(repo, dict):
            name, branch = repo.get("name"), repo.get("default_branch")
            if isinstance(name, str) and isinstance(branch, str) and branch:
                out[name] = branch
    return out


def download(store: Store, key: str, dest: Path, size: int, progress: bool = True) -> None:
    """Stream ``key`` to ``dest``; the byte count must be the object's ``size``."""
    bar = Progress(total=size, unit="B", desc=key[-40:], enabled=progress, unit_scale=True)
    got = 0
    try:
        with store.open(key) as src, dest.open("wb") as out:
            while chunk := src.read(min(CHUNK_BYTES, size - got + 1)):
                got += len(chunk)
                if got > size:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    except NotFound:
        raise ArchiveError(f"missing object {key}") from None
    finally:
        bar.close()
    if got != size:
        raise ArchiveError(f"{key}: download truncated: {got} bytes, the store says {size}")
