"""Applying an archive's parts on a repository: how restore rebuilds a repository, and how an
increment is proved before it is committed (proof.py) -- the same steps, so that an increment
that passes its proof restores."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from bulkbackup.archive.stored import ArchivePart, download
from bulkbackup.errors import ArchiveError, printable
from bulkbackup.git.bundles import BundleHeader, Opener, read_header
from bulkbackup.git.localgit import Git


def apply_part(git: Git, dest: Path, path: Path, key: str) -> BundleHeader:
    """Apply the bundle at ``path`` (the store's ``key``) on the repository ``dest``, as
    restore does it and as an increment is proved before it is committed (proof.py); its
    header."""
    header = read_header(path, key)
    git("bundle", "verify", "--quiet", str(path), cwd=dest)
    try:
        git("fetch", "--quiet", "--prune", "--no-write-fetch-head", str(path),
            "+refs/*:refs/*", cwd=dest)  # + : an increment may move refs anywhere
    except ArchiveError as exc:
        if "early EOF" in str(exc) or "premature" in str(exc):
            raise ArchiveError(f"{key}: bundle truncated ({exc})") from None
        raise ArchiveError(f"{key}: bundle unreadable ({exc})") from None
    return header


def check_refs(git: Git, dest: Path, header: BundleHeader, what: str) -> dict[str, str]:
    """The refs of ``dest``, which must be those of the last bundle applied."""
    refs = git.refs(dest)
    if refs != header.refs:
        raise ArchiveError(f"{what}: restored refs differ from the bundle's header: "
                           + _ref_diff(header.refs, refs))
    return refs


class PartReader(Opener, Protocol):
    def local_path(self, key: str) -> Path | None: ...


def readable(store: PartReader, part: ArchivePart, scratch: Path, progress: bool) -> Path:
    """A file with the part's data: the local store's own file, read in place (git only
    reads it), else a download to ``scratch``. Either way its size is the part's."""
    path = store.local_path(part.key)
    if path is not None and path.stat().st_size == part.size:
        return path
    download(store, part.key, scratch, part.size, progress)
    return scratch


def _ref_diff(expected: dict[str, str], got: dict[str, str]) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    moved = sorted(r for r in set(expected) & set(got) if expected[r] != got[r])
    parts = [f"{what} {', '.join(refs[:5])}{' ...' if len(refs) > 5 else ''}"
             for what, refs in (("missing", missing), ("extra", extra), ("moved", moved)) if refs]
    return printable("; ".join(parts))  # ref names come from the bundle: untrusted
