"""Which objects of the store make up a repository's archive, and reading them.

`archive_at` is the one function that answers it: the full base `<login>/<repo>.bundle` and
the increments committed on it (its `Increments` metadata), or, for an earlier time, a kept
chain (README "Incremental archives"). `restore.build_mirror` fetches the parts in order.
Keys come from archive/layout.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

import orjson

from bulkbackup.archive import chains, layout
from bulkbackup.archive.metadata import ERROR, LAST_SYNC
from bulkbackup.errors import ArchiveError, NotFound
from bulkbackup.git.bundles import Opener
from bulkbackup.names import is_archive_name, is_repo_name, is_wiki_name
from bulkbackup.progress import Progress
from bulkbackup.store import Head, ObjectInfo, Store
from bulkbackup.timeutil import format_rfc3339, parse_rfc3339

CHUNK_BYTES = 1 << 20
MAX_USER_OBJECT_BYTES = 256 << 20


class Lister(Protocol):
    """What listing a user's objects needs: a Store, or the FencedStore a writer holds."""

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]: ...


@dataclass(frozen=True)
class ArchivePart:
    """One bundle of an archive: the full bundle, or an increment on top of it."""

    key: str
    size: int


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
    latest: bool = True  # the newest state (only it has a zip: zips are not kept)

    @property
    def error(self) -> str:
        return self.bundle.get(ERROR)

    @property
    def empty_repository(self) -> bool:
        return not self.parts and self.error == layout.EMPTY_REPOSITORY


def latest_archive(store: Store, login: str, repo: str,
                   index: chains.StoredParts | None = None) -> RepoArchive:
    """The objects of the newest archive of ``login/repo``; raises ArchiveError if none.
    ``index``: the repository's parts, when the caller has listed them already."""
    key = layout.bundle_key(login, repo)
    head = store.head(key)
    if head is None:
        raise ArchiveError(f"missing object {key}")
    _check_increments(key, head)
    chain, n = chains.chain_of(head), chains.committed(head)
    last_sync = head.get(LAST_SYNC)
    parts: tuple[ArchivePart, ...] = ()
    if head.size > 0:
        if n and index is None:
            index = list_parts(store, login, repo)
        parts = (ArchivePart(key, head.size),
                 *increments(index or chains.StoredParts(), login, repo, chain, n))
    zip_key = layout.zip_key(login, repo)
    return RepoArchive(login, repo, parts, key, head, zip_key, store.head(zip_key) is not None,
                       last_sync, format_rfc3339(layout.chain_time(chain) or head.last_modified))


def _check_increments(key: str, head: Head) -> None:
    """Damaged `Increments` would make the base alone look like the whole state."""
    if damage := chains.increments_damage(head):
        raise ArchiveError(f"{key}: {damage}")


def list_parts(store: Lister, login: str, repo: str) -> chains.StoredParts:
    """Every part of every chain of ``login/repo``: one listing."""
    parts = chains.StoredParts()
    for info in store.list(layout.parts_prefix(login, repo)):
        key = layout.parse_key(info.key)
        if key.kind is layout.Kind.PART and (key.login, key.repo) == (login, repo):
            parts.add(key.chain, key.seq, info.size)
    return parts


def increments(index: chains.StoredParts, login: str, repo: str, chain: str, n: int
               ) -> list[ArchivePart]:
    """Increments 1..n of ``chain``; a missing one is an ArchiveError: the chain cannot be
    restored past it."""
    found = index.chains.get(chain, {})
    parts = []
    for seq in range(1, n + 1):
        key = layout.part_key(login, repo, chain, seq)
        if seq not in found:
            raise ArchiveError(f"missing object {key}")
        parts.append(ArchivePart(key, found[seq]))
    return parts


def archive_at(store: Store, login: str, repo: str, at: datetime | None) -> RepoArchive:
    """The archive as it was at ``at`` (None: the latest): the newest state archived at or
    before ``at``, from the current chain or a kept one."""
    index = list_parts(store, login, repo)
    archive = latest_archive(store, login, repo, index)
    kept = index.kept()
    oldest = min([archive.oldest, *(_chain_start(c) for c in kept)])
    archive = replace(archive, oldest=oldest)
    if at is None:
        return archive
    current = chains.chain_of(archive.bundle)
    started = [(layout.chain_time(c), c) for c in [*kept, current]]
    candidates = sorted((t, c) for t, c in started if t is not None and t <= at)
    if not candidates:
        raise ArchiveError(f"no archive at {format_rfc3339(at)}: the oldest is {oldest}")
    chain = candidates[-1][1]
    if chain == current:
        return _until(store, archive, at, chain)
    base_key = layout.part_key(login, repo, chain, 0)
    base = store.head(base_key)
    if base is None:
        raise ArchiveError(f"missing object {base_key}")
    _check_increments(base_key, base)
    parts = ((ArchivePart(base_key, base.size),
              *increments(index, login, repo, chain, chains.committed(base)))
             if base.size > 0 else ())
    kept_archive = replace(archive, parts=parts, bundle=base, last_sync=base.get(LAST_SYNC),
                           latest=False, has_zip=False)
    return _until(store, kept_archive, at, chain)


def _chain_start(chain: str) -> str:
    when = layout.chain_time(chain)
    return format_rfc3339(when) if when else ""


def _until(store: Store, archive: RepoArchive, at: datetime, chain: str) -> RepoArchive:
    """``archive`` without the increments archived after ``at`` (each increment's
    `LastSync` says when; one HEAD per increment, newest first, until one is old enough)."""
    parts = list(archive.parts)
    while len(parts) > 1:
        head = store.head(parts[-1].key)
        when = parse_rfc3339(head.get(LAST_SYNC)) if head else None
        if head is None:
            raise ArchiveError(f"missing object {parts[-1].key}")
        if (when or head.last_modified) <= at:
            latest = archive.latest and len(parts) == len(archive.parts)
            return replace(archive, parts=tuple(parts), last_sync=head.get(LAST_SYNC),
                           latest=latest, has_zip=archive.has_zip and latest)
        parts.pop()
    if len(parts) == len(archive.parts):
        return archive
    return replace(archive, parts=tuple(parts), last_sync=_chain_start(chain), latest=False,
                   has_zip=False)


def repositories(store: Lister, login: str) -> dict[str, int]:
    """The repositories with a bundle (data or not) stored for ``login``, in name order:
    name -> the bundle's size (0: no archive). One shallow listing, not a request per
    repository (the chains' parts below are not listed). A key with a name no repository
    can have (names.is_repo_name: not written by a sync) is not one of them."""
    return _bundles(store, login, is_repo_name)


def wikis(store: Lister, login: str) -> dict[str, int]:
    """The wikis with a bundle stored for ``login``: `<repo>.wiki` -> the bundle's size (0:
    no archive), as `repositories` (one shallow listing)."""
    return _bundles(store, login, is_wiki_name)


def archived(store: Lister, login: str) -> dict[str, int]:
    """The repositories and wikis with a bundle (what restore and verify go through)."""
    return _bundles(store, login, is_archive_name)


def _bundles(store: Lister, login: str, accept: Callable[[object], bool]) -> dict[str, int]:
    found: dict[str, int] = {}
    for info in store.list(layout.user_prefix(login), shallow=True):
        key = layout.parse_key(info.key)
        if key.kind is layout.Kind.BUNDLE and key.login == login and accept(key.repo):
            found[key.repo] = info.size
    return dict(sorted(found.items()))


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


def download(store: Opener, key: str, dest: Path, size: int, progress: bool = True) -> None:
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


def stored_spelling(store: Store, login: str) -> str:
    """The spelling ``login`` is stored under; ``login`` itself when the store has no such
    user (the caller then reports it missing, or archives it under that spelling)."""
    if store.head(layout.user_key(login)) is not None:
        return login
    found, _ = store.top_ignoring_case(login, 1, whole=True)
    return found[0] if found else login


def gists(store: Lister, login: str) -> dict[str, int]:
    """The gists with a bundle stored for ``login``: id -> the bundle's size (0: no
    archive), in id order. One shallow listing of `<login>/gists/`."""
    found: dict[str, int] = {}
    for info in store.list(layout.gists_prefix(login), shallow=True):
        key = layout.parse_key(info.key)
        gist_id = layout.gist_of(key.repo) if key.login == login else None
        if key.kind is layout.Kind.BUNDLE and gist_id is not None:
            found[gist_id] = info.size
    return dict(sorted(found.items()))
