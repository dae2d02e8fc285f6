"""Prove that an increment applies on its chain before it is committed (README "Incremental
archives").

A git server can answer an increment fetch with a pack that `git bundle verify` accepts but
`git fetch` from the bundle refuses (objects missing, a delta past its base, a branch at a
blob, ...). Committed, such an increment would make every later state unrestorable. So the
chain is rebuilt in a scratch bare repository and the increment applied on it with
`archive.apply.apply_part`, exactly as `restore` applies it: an increment that passes restores.
The committed parts were proved when they were committed: their packs are only indexed
(`index-pack --fix-thin`, what `git fetch` from them runs) and the refs of the committed
state set; `git fetch` of the increment then checks what is new (every object arrives and
inflates, deltas apply, the refs' objects are connected, a branch points at a commit), and
the refs must be the increment's header's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bulkbackup.archive.apply import PartReader, apply_part, check_refs, readable
from bulkbackup.archive.stored import ArchivePart
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError
from bulkbackup.git.bundles import BundleHeader, parse_header
from bulkbackup.git.localgit import Git


@dataclass(frozen=True)
class Proof:
    """What applying an increment on its chain found."""

    error: str  # "" when the increment applies; else why not (one line)
    repo: Path  # the scratch repository: the new state when proved
    read_bytes: int  # bytes of the committed parts read back from the store (in place or not)
    downloaded_bytes: int  # of which downloaded (a store without local files: S3)

    @property
    def proved(self) -> bool:
        return not self.error


def _index(git: Git, dest: Path, path: Path, key: str) -> BundleHeader:
    """The pack of a committed part indexed into ``dest`` (`index-pack --fix-thin`, as `git
    fetch` from the bundle would): its objects, without the connectivity walk that part had
    when it was proved; its header."""
    with path.open("rb") as f:
        header = parse_header(f, key, need_pack=False)
        offset = f.tell()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        git("index-pack", "--stdin", "--fix-thin", cwd=dest, stdin=fd)
    except ArchiveError as exc:
        raise ArchiveError(f"{key}: bundle unreadable ({exc})") from None
    finally:
        os.close(fd)
    return header


def _set_refs(git: Git, dest: Path, state: BundleHeader, scratch: Path) -> None:
    """The refs of the committed state, so that `git fetch` of the increment checks only
    what is new (one `update-ref --stdin`: git checks each name and id)."""
    scratch.write_bytes(b"".join(f"update {name} {oid}\n".encode()
                                 for name, oid in sorted(state.refs.items())))
    fd = os.open(scratch, os.O_RDONLY)
    try:
        git("update-ref", "--stdin", cwd=dest, stdin=fd)
    finally:
        os.close(fd)
        scratch.unlink(missing_ok=True)


def prove(store: PartReader, settings: Settings, committed: Sequence[ArchivePart],
          increment: Path, increment_key: str, work: Path) -> Proof:
    """Apply ``committed`` (the base, then the increments on it) and then ``increment`` (to
    be stored as ``increment_key``) in a bare repository under ``work`` (emptied first; the
    caller removes it, after making the zip from the proved state).

    A committed part that cannot be read or applied raises ArchiveError (the stored chain
    is damaged: the caller stores a full archive instead); the increment failing to apply
    is the Proof's error. Each git call is bounded by `run.git_timeout_s`.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    read = downloaded = 0
    git = Git(settings, work)
    dest = work / "proof.git"
    git("init", "--quiet", "--bare", str(dest), cwd=work)
    with (dest / "config").open("a") as config:
        # A scratch repository, removed after: flushing its packs to disk is wasted time.
        config.write("[core]\n\tfsync = none\n")
    scratch = work / "part.bundle"
    state: BundleHeader | None = None
    for part in committed:
        path = readable(store, part, scratch, progress=False)
        read += part.size
        downloaded += part.size if path == scratch else 0
        state = _index(git, dest, path, part.key)
        scratch.unlink(missing_ok=True)
    if state is not None:
        _set_refs(git, dest, state, work / "refs.txt")
    try:
        header = apply_part(git, dest, increment, increment_key)
        check_refs(git, dest, header, increment_key)
    except ArchiveError as exc:
        return Proof(str(exc), dest, read, downloaded)
    return Proof("", dest, read, downloaded)
