"""A restored repository's Git LFS objects, put where `git lfs` finds them in a bare
repository: `<mirror>/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>` (git-lfs's local storage).

Every object stored for the repository (`<login>/<repo>.lfs/`, one listing) is downloaded
and its sha256 checked before it is put there: a damaged object is an ArchiveError (the
restore fails, as for a damaged bundle). LFS objects are content-addressed and never
deleted, so `restore --at TIME` gets them all (the ones a later state added too).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bulkbackup.archive import layout
from bulkbackup.archive.stored import download
from bulkbackup.errors import ArchiveError
from bulkbackup.store import Store

_CHUNK = 1 << 20


def lfs_object_path(mirror: Path, oid: str) -> Path:
    return mirror / "lfs" / "objects" / oid[0:2] / oid[2:4] / oid


def restore_lfs_objects(store: Store, login: str, repo: str, mirror: Path,
                        progress: bool = False) -> int:
    """Put ``login/repo``'s stored LFS objects into the bare repository ``mirror``; how
    many."""
    count = 0
    for info in store.list(layout.lfs_prefix(login, repo)):
        key = layout.parse_key(info.key)
        if key.kind is not layout.Kind.LFS or key.login != login or key.repo != repo:
            continue
        dest = lfs_object_path(mirror, key.oid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        download(store, info.key, partial, info.size, progress)
        if _sha256(partial) != key.oid:
            partial.unlink(missing_ok=True)
            raise ArchiveError(f"{info.key}: its content's sha256 is not its oid")
        os.replace(partial, dest)
        count += 1
    return count


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
