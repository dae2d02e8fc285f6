"""The Git LFS objects a repository's newly archived commits point to, fetched once and
stored content-addressed as `<login>/<repo>.lfs/<oid>` (archive/layout.py).

The writer names the pointers in what it just stored (archive/writer.py: a full archive's
every object, an increment's new ones); the objects already stored are skipped after one
listing of `<login>/<repo>.lfs/` (so none is fetched or stored twice), the rest fetched
through the git host's LFS batch API (git/lfsfetch.py, git's token rules) within the caps:
`run.max_lfs_object_mb` per object (a larger one is not asked for) and `run.max_lfs_repo_mb`
per repository and pass.

What could not be stored (an object missing on the server, a sha256 mismatch, too large, a
download URL refused, a redirect) is recorded in the repository's bundle metadata as
`LfsError` (`<n> LFS objects not stored: <oid>: <reason>; ...`), never in its `Error`: the
repository's archive is whole without them. An increment's failures are added to the ones
already recorded; a full archive writes a new bundle, and with it a new LfsError (its scan
covers every object again, so what failed before is tried again then).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import LFS_ERROR
from bulkbackup.config import RunSettings
from bulkbackup.git.auth import GitAuth
from bulkbackup.git.lfsfetch import LfsFailure, batch, deadline, download
from bulkbackup.http.bounded import BoundedPool
from bulkbackup.store.fenced import FencedStore

log = logging.getLogger(__name__)

MAX_LFS_ERROR_CHARS = 1500  # LfsError's text (the store's metadata limit is shared)


@dataclass
class LfsResult:
    stored: int = 0  # objects stored by this pass
    bytes: int = 0
    failures: list[LfsFailure] = field(default_factory=list)


def store_lfs_objects(store: FencedStore, run: RunSettings, login: str, repo: str,
                      clone_url: str, pointers: Mapping[str, int], auth: GitAuth,
                      scratch: Path, search_error: str = "") -> LfsResult:
    """Fetch and store the objects of ``pointers`` (oid -> size) not stored yet; record
    what failed (``search_error``: the pointers could not all be searched)."""
    result = LfsResult()
    if search_error:
        result.failures.append(LfsFailure("*", search_error))
    if pointers:
        stored = {layout.parse_key(i.key).oid for i in store.list(layout.lfs_prefix(login, repo))}
        wanted = {o: s for o, s in sorted(pointers.items()) if o not in stored}
        if wanted:
            _fetch(store, run, login, repo, clone_url, wanted, auth, scratch, result)
    if result.failures:
        _record(store, login, repo, result.failures)
    return result


def _fetch(store: FencedStore, run: RunSettings, login: str, repo: str, clone_url: str,
           wanted: dict[str, int], auth: GitAuth, scratch: Path, result: LfsResult) -> None:
    max_object = run.max_lfs_object_mb << 20
    budget = run.max_lfs_repo_mb << 20
    asked: dict[str, int] = {}
    for oid, size in wanted.items():
        if size > max_object:
            result.failures.append(LfsFailure(
                oid, f"{size} bytes, above run.max_lfs_object_mb ({run.max_lfs_object_mb})"))
        elif size > budget:
            result.failures.append(LfsFailure(
                oid, f"over run.max_lfs_repo_mb ({run.max_lfs_repo_mb}) in this pass"))
        else:
            budget -= size
            asked[oid] = size
    if not asked:
        return
    scratch.mkdir(parents=True, exist_ok=True)
    pool = BoundedPool(1, num_pools=2)
    ends = deadline(run.git_timeout_s)
    try:
        downloads, failed = batch(pool, clone_url, asked, auth, ends)
        result.failures += failed
        for item in downloads:
            store.fence.check()  # abandon early: the user may not be ours any more
            path = scratch / item.oid
            failure = download(pool, item, path, auth, ends)
            if failure is not None:
                result.failures.append(failure)
                continue
            try:
                store.put_file(layout.lfs_key(login, repo, item.oid), path, {})
            finally:
                path.unlink(missing_ok=True)
            result.stored += 1
            result.bytes += item.size
    finally:
        pool.clear()


def _record(store: FencedStore, login: str, repo: str, failures: list[LfsFailure]) -> None:
    """LfsError on the repository's bundle (this pass's failures, then the earlier ones)."""
    key = layout.bundle_key(login, repo)
    head = store.head(key)
    if head is None or head.size == 0:
        return  # no archive to describe (the repository's own Error says why)
    for failure in failures:
        log.info("%s/%s: LFS object %s: %s", login, repo, failure.oid, failure.reason)
    text = f"{len(failures)} LFS objects not stored: " + "; ".join(
        f"{f.oid}: {f.reason}" for f in failures)
    earlier = head.get(LFS_ERROR)
    if earlier:
        text += "; earlier: " + earlier
    if len(text) > MAX_LFS_ERROR_CHARS:
        text = text[: MAX_LFS_ERROR_CHARS - 3] + "..."
    store.replace_metadata(key, layout.updated_metadata(head, {LFS_ERROR: text}))
