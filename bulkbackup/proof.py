"""Prove that an increment applies on its chain before it is committed (README "Incremental
archives").

A git server can answer an increment fetch with a pack that `git bundle verify` accepts but
`git fetch` from the bundle refuses (objects missing, a delta past its base, a branch at a
blob, ...). Committed, such an increment would make every later state unrestorable. So the
committed parts and the new increment are applied in a scratch bare repository with
`restore.apply_part`, exactly as `restore` applies them: an increment that passes restores.
The committed parts were proved when they were committed; `git fetch` of the increment then
checks what is new (every object arrived and inflates, deltas apply, the refs' objects are
connected, a branch points at a commit), and the refs must be the bundle's header's.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bulkbackup.archives import ArchivePart
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError
from bulkbackup.restore import Git, PartReader, apply_part, check_refs, readable


@dataclass(frozen=True)
class Proof:
    """What applying an increment on its chain found."""

    error: str  # "" when the increment applies; else why not (one line)
    read_bytes: int  # bytes of the committed parts read back from the store (in place or not)
    downloaded_bytes: int  # of which downloaded (a store without local files: S3)

    @property
    def proved(self) -> bool:
        return not self.error


def prove(store: PartReader, settings: Settings, committed: Sequence[ArchivePart],
          increment: Path, increment_key: str, work: Path) -> Proof:
    """Apply ``committed`` (the base, then the increments on it) and then ``increment`` (to
    be stored as ``increment_key``) in a bare repository under ``work`` (removed after).

    A committed part that cannot be read or applied raises ArchiveError (the stored chain
    is damaged: the caller stores a full archive instead); the increment failing to apply
    is the Proof's error. Each git call is bounded by `run.git_timeout_s`.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    read = downloaded = 0
    try:
        git = Git(settings, work)
        dest = work / "proof.git"
        git("init", "--quiet", "--bare", str(dest), cwd=work)
        scratch = work / "part.bundle"
        for part in committed:
            path = readable(store, part, scratch, progress=False)
            read += part.size
            downloaded += part.size if path == scratch else 0
            apply_part(git, dest, path, part.key)
            scratch.unlink(missing_ok=True)
        try:
            header = apply_part(git, dest, increment, increment_key)
            check_refs(git, dest, header, increment_key)
        except ArchiveError as exc:
            return Proof(str(exc), read, downloaded)
        return Proof("", read, downloaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)
