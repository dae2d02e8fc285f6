"""The one archive writer: a changed repository stored as an increment on its chain when it
can be one, else as a full archive (zip, the replaced chain kept as history, the new full
bundle last: the commit); failures recorded on the archive without ever replacing a good one
(README "Incremental archives").

The order of writes is what makes a kill at any point harmless: an increment object is
written first under a key no reader follows yet, and becomes part of the archive only when
the base's metadata says `Increments: n+1` (one atomic metadata replace); a new full base is
written only after the chain it replaces was copied to history (history.py), and deletions
come last.

It knows the archive's format and the store, not the forge: what it is told about the
repository is a `Change` (clone URL, default branch, the forge's times). `backup/` lists,
decides what changed and calls it; every write goes through the user's FencedStore.
"""

from __future__ import annotations

import enum
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from bulkbackup.archive import chains, history, layout
from bulkbackup.archive.layout import EMPTY_REPOSITORY
from bulkbackup.archive.metadata import (
    CHAIN,
    CHAIN_BYTES,
    ERROR,
    INCREMENTS,
    KEPT_SINCE,
    LAST_SYNC,
    PUSHED_AT,
    UPDATED_AT,
    VERIFIED_AT,
    VERIFY_NOTES,
    fitted,
)
from bulkbackup.archive.proof import prove
from bulkbackup.archive.stored import ArchivePart, increments, list_parts
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError, GitError, InvalidName
from bulkbackup.git.auth import GitAuth
from bulkbackup.git.bundles import BundleHeader, stored_header
from bulkbackup.git.gitops import Archive, GitWork
from bulkbackup.git.lfspointers import lfs_pointers
from bulkbackup.git.packfetch import FetchedIncrement, fetch_increment
from bulkbackup.store import Head
from bulkbackup.store.fenced import FencedStore
from bulkbackup.timeutil import format_rfc3339, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """What the forge says about the repository now, and when this sync saw it."""

    clone_url: str
    default_branch: str | None
    pushed_at: str
    updated_at: str
    when: datetime  # when this sync saw it: LastSync of what is written, a new chain's id

    @property
    def stamp(self) -> str:
        return format_rfc3339(self.when)

    def times(self) -> dict[str, str]:
        """The metadata saying which state of the repository an object holds."""
        return {LAST_SYNC: self.stamp, PUSHED_AT: self.pushed_at, UPDATED_AT: self.updated_at}


class WriteOutcome(enum.Enum):
    ARCHIVED = "archived"  # a full archive or an increment was committed
    UNCHANGED = "unchanged"  # nothing new to store (same refs, or a newer archive is there)
    EMPTY = "empty"  # stored as an empty repository (no refs)
    FAILED = "failed"  # not stored: `error` says why, recorded on the archive


@dataclass(frozen=True)
class Written:
    """What one repository's write did."""

    outcome: WriteOutcome
    bytes: int = 0  # uploaded
    read_bytes: int = 0  # read back from the store to prove an increment
    # The bundle's size in the store afterwards (0: no archive with data); None: unknown
    # here (unchanged), the caller keeps what its listing said.
    bundle_size: int | None = None
    error: str = ""
    # The Git LFS objects (oid -> size) the newly archived objects point to (write(lfs=True):
    # every object of a full archive, an increment's new ones); the caller fetches them.
    lfs: dict[str, int] = field(default_factory=dict)
    lfs_error: str = ""  # the search for them failed (the archive itself is fine)


class FullPlan(enum.Enum):
    """What a full archive just built does to the stored one (`plan_full`)."""

    STORE = "store"  # written: the new state
    NEWER_STORED = "newer stored"  # nothing written: the stored archive is newer
    KEEP_LAST = "keep last"  # emptied without history: the last archive stays, Error says why


def plan_full(fresh: Head | None, change: Change, emptied: bool, keep_days: int) -> FullPlan:
    """Decide from the stored base ``fresh`` (read after the mirror was built) whether the
    new full archive is written. Never back in time: another worker may have stored a newer
    archive meanwhile. Without history (``keep_days`` 0) an emptied repository's last
    archive with data is all there is: it is kept, not replaced by an empty one."""
    if fresh is None or fresh.size == 0:
        return FullPlan.STORE
    if chains.newer_than(fresh, change.pushed_at, change.updated_at):
        return FullPlan.NEWER_STORED
    return FullPlan.KEEP_LAST if emptied and keep_days == 0 else FullPlan.STORE


class ArchiveWriter:
    """Writes the archives of one worker process (one per UserBackup)."""

    def __init__(self, settings: Settings, gitwork: GitWork,
                 committed: Callable[[str, str], None] | None = None) -> None:
        """``committed(login, repo)``: told of each increment committed (a run's worker
        marks it pending verify: queue/pending.py)."""
        self.settings = settings
        self.gitwork = gitwork
        self.committed = committed

    def write(self, store: FencedStore, login: str, name: str, change: Change,
              head: Head | None, auth: GitAuth, lfs: bool = False) -> Written:
        """Store the changed repository ``login/name`` (``head``: its full bundle now);
        with ``lfs`` the Written names the LFS objects the new objects point to."""
        if (head is not None and not head.get(ERROR).startswith(layout.VERIFY_FAILED)
                and chains.next_step(head, self.settings.run) is chains.Step.INCREMENT):
            done = self._increment(store, login, name, change, head, auth, lfs)
            if done is not None:
                return done
        return self._full(store, login, name, change, head, auth, lfs)

    def _lfs(self, written: Written, login: str, name: str, repo: Path,
             include: list[str], exclude: list[str]) -> Written:
        """``written`` with the LFS pointers among the objects of ``repo`` reachable from
        ``include`` and not from ``exclude`` (a failure to look is recorded apart)."""
        try:
            found = lfs_pointers(repo, include, exclude, self.gitwork.env(),
                                 self.settings.run.git_timeout_s,
                                 self.gitwork.user_dir(login) / f"{name}.lfs-scan")
        except GitError as exc:
            return replace(written, lfs_error=f"LFS pointers not searched: {exc}")
        return replace(written, lfs=found)

    # -- the increment --------------------------------------------------------------------

    def _increment(self, store: FencedStore, login: str, name: str, change: Change,
                   head: Head, auth: GitAuth, lfs: bool) -> Written | None:
        """An increment on the chain ``head`` (a base with data) is the base of. None: a
        full archive is needed (the repository was emptied, or its stored chain cannot be
        read)."""
        try:
            done = self._fetch_and_commit(store, login, name, change, head, auth, lfs)
        except (GitError, InvalidName) as exc:
            return self.record_failure(store, login, name, head, str(exc))
        except ArchiveError as exc:
            log.warning("%s/%s: a full archive instead of an increment: %s", login, name, exc)
            return None
        if done is None:
            return None
        if done.outcome is WriteOutcome.FAILED:
            # Refused: the old state stays the newest; its PushedAt/UpdatedAt are the old
            # ones, so the next pass fetches again.
            failed = self.record_failure(store, login, name, head, done.error)
            return Written(WriteOutcome.FAILED, 0, done.read_bytes, failed.bundle_size,
                           done.error)
        self.prune_expired(store, login, name, head)
        if done.outcome is WriteOutcome.ARCHIVED and self.committed is not None:
            self.committed(login, name)
        return done

    def _fetch_and_commit(self, store: FencedStore, login: str, name: str, change: Change,
                          head: Head, auth: GitAuth, lfs: bool) -> Written | None:
        """Fetch what is new since the state ``head`` describes, prove it applies on the
        chain (proof.py) and commit it as increment n+1. Written FAILED (nothing written)
        when it does not apply; UNCHANGED when git has nothing new (only the forge's times
        move: recorded) or the base changed meanwhile (another writer: nothing written);
        None when the remote has no refs left. Raises ArchiveError when the stored chain
        cannot be read, GitError when the fetch fails."""
        chain, n = chains.chain_of(head), chains.committed(head)
        latest = layout.bundle_key(login, name) if n == 0 else layout.part_key(
            login, name, chain, n)
        old = stored_header(store, latest)
        dest = self.gitwork.user_dir(login) / f"{name}.increment.bundle"
        dest.parent.mkdir(parents=True, exist_ok=True)
        # With HEAD: a default branch that moved alone is a change too.
        old_refs = {**old.refs, "HEAD": old.head} if old.head else old.refs
        fetched = fetch_increment(change.clone_url, old_refs, change.default_branch, dest,
                                  self.settings.run, auth,
                                  store.fence.check)
        if not fetched.refs:
            return None
        base_key = layout.bundle_key(login, name)
        fresh = store.head(base_key)
        if fresh is None or (chains.chain_of(fresh), chains.committed(fresh)) != (chain, n):
            return Written(WriteOutcome.UNCHANGED)
        if fetched.bundle is None:
            # Chain too: a base from before increments must keep the id its LastSync gave.
            store.replace_metadata(base_key, layout.updated_metadata(
                fresh, {**change.times(), CHAIN: chain}))
            return Written(WriteOutcome.UNCHANGED)
        work = self.gitwork.user_dir(login) / f"{name}.proof"
        try:
            done = self._commit(store, login, name, fresh, change, old, fetched, work)
            if lfs and done.outcome is WriteOutcome.ARCHIVED:  # the proof's repo: new state
                done = self._lfs(done, login, name, work / "proof.git",
                                 sorted(set(fetched.refs.values())),
                                 sorted(set(old.refs.values())))
            return done
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _commit(self, store: FencedStore, login: str, name: str, fresh: Head, change: Change,
                old: BundleHeader, fetched: FetchedIncrement, work: Path) -> Written:
        """Prove the increment on the chain ``fresh`` is the base of, then write the zip
        (made from the proof's repository: no fetch), the increment, and the commit."""
        assert fetched.bundle is not None
        chain, n = chains.chain_of(fresh), chains.committed(fresh)
        key = layout.part_key(login, name, chain, n + 1)
        proof = prove(store, self.settings, self._committed(store, login, name, fresh, n),
                      fetched.bundle, key, work)
        store.fence.check()  # abandon early: the proof may have taken a while
        if not proof.proved:
            # Nothing is written: the old state stays the newest (the caller records why).
            fetched.bundle.unlink()
            return Written(WriteOutcome.FAILED, 0, proof.read_bytes,
                           error=f"increment refused: {proof.error}")
        uploaded = self._zip(store, login, name, change, old, fetched, proof.repo)
        store.put_file(key, fetched.bundle, change.times())
        size = fetched.bundle.stat().st_size
        fetched.bundle.unlink()  # a user's disk use is one repository's, not all of them
        # The commit: from here a restore applies increment n+1.
        meta = layout.updated_metadata(fresh, {
            **change.times(), CHAIN: chain, INCREMENTS: str(n + 1),
            CHAIN_BYTES: str(chains.chain_bytes(fresh) + size), ERROR: ""})
        meta.pop(VERIFIED_AT, None)  # the new state has not been verified
        meta.pop(VERIFY_NOTES, None)
        store.replace_metadata(layout.bundle_key(login, name), meta)
        return Written(WriteOutcome.ARCHIVED, uploaded + size, proof.read_bytes)

    @staticmethod
    def _committed(store: FencedStore, login: str, name: str, base: Head, n: int
                   ) -> list[ArchivePart]:
        """The base and its ``n`` committed increments; a missing one is an ArchiveError
        (the chain cannot be built on: the caller stores a full archive)."""
        listed = list_parts(store, login, name) if n else chains.StoredParts()
        return [ArchivePart(layout.bundle_key(login, name), base.size),
                *increments(listed, login, name, chains.chain_of(base), n)]

    def _zip(self, store: FencedStore, login: str, name: str, change: Change,
             old: BundleHeader, fetched: FetchedIncrement, repo: Path) -> int:
        """A new zip when the default branch moved (or was renamed), made from ``repo``
        (the proof's: the new state, proved); written before the increment, as a full
        archive writes it before the bundle."""
        branch, tip = fetched.branch, fetched.head
        if branch is None or tip is None:
            return 0
        if old.head == tip and old.refs.get(f"refs/heads/{branch}") == tip:
            return 0
        path = self.gitwork.zip_from(login, name, repo, branch, tip)
        store.put_file(layout.zip_key(login, name), path, {LAST_SYNC: change.stamp})
        size = path.stat().st_size
        path.unlink()
        return size

    # -- the full archive -----------------------------------------------------------------

    def _full(self, store: FencedStore, login: str, name: str, change: Change,
              head: Head | None, auth: GitAuth, lfs: bool) -> Written:
        """Mirror the repository and store its archives (the bundle last)."""
        try:
            archive = self.gitwork.archive(login, name, change.clone_url, change.default_branch,
                                           auth, store.fence.check, keep_mirror=lfs)
        except (GitError, InvalidName) as exc:
            return self.record_failure(store, login, name, head, str(exc))
        try:
            done = self._plan_full(store, login, name, change, archive)
            if archive.mirror is not None and done.outcome is WriteOutcome.ARCHIVED:
                done = self._lfs(done, login, name, archive.mirror, ["--all"], [])
            return done
        finally:
            if archive.mirror is not None:
                shutil.rmtree(archive.mirror, ignore_errors=True)

    def _plan_full(self, store: FencedStore, login: str, name: str, change: Change,
                   archive: Archive) -> Written:
        fresh = store.head(layout.bundle_key(login, name))
        plan = plan_full(fresh, change, archive.bundle is None,
                         self.settings.run.keep_history_days)
        if plan is FullPlan.NEWER_STORED:
            return Written(WriteOutcome.UNCHANGED)
        if plan is FullPlan.KEEP_LAST:
            return self.record_failure(store, login, name, fresh, EMPTY_REPOSITORY)
        return self._store_full(store, login, name, change, archive, fresh)

    def _store_full(self, store: FencedStore, login: str, name: str, change: Change,
                    archive: Archive, fresh: Head | None) -> Written:
        """Zip, the replaced chain kept as history, the new full bundle (the commit), then
        what the retention no longer needs is deleted."""
        key = layout.bundle_key(login, name)
        keep_days = self.settings.run.keep_history_days
        meta = {**change.times(), CHAIN: chains.new_chain(fresh, change.when),
                INCREMENTS: "0"}
        parts = list_parts(store, login, name) if fresh is not None else chains.StoredParts()
        uploaded = 0
        if archive.zip is not None:
            store.put_file(layout.zip_key(login, name), archive.zip, {LAST_SYNC: change.stamp})
            uploaded += archive.zip.stat().st_size
            archive.zip.unlink()  # a user's disk use is one repository's at a time
        empty_before = fresh is not None and fresh.size == 0 and chains.has_archive(fresh)
        if archive.bundle is None and fresh is not None and empty_before:
            meta[CHAIN] = chains.chain_of(fresh)  # empty before too: the same chain
        else:
            history.keep_history(store, login, name, fresh, parts, keep_days)
        doomed, kept_since = history.plan_prune(parts, meta[CHAIN], now(), keep_days)
        if kept_since:
            meta[KEPT_SINCE] = kept_since
        if archive.bundle is None:
            store.put_bytes(key, b"", {**meta, ERROR: EMPTY_REPOSITORY})
            history.delete_chains(store, login, name, parts, doomed)
            return Written(WriteOutcome.EMPTY, uploaded, bundle_size=0)
        # The bundle goes last: its PushedAt/UpdatedAt say the archives are complete.
        store.put_file(key, archive.bundle, meta)
        size = archive.bundle.stat().st_size
        archive.bundle.unlink()
        history.delete_chains(store, login, name, parts, doomed)
        return Written(WriteOutcome.ARCHIVED, uploaded + size, bundle_size=size)

    # -- unchanged, failed ----------------------------------------------------------------

    def prune_expired(self, store: FencedStore, login: str, name: str, head: Head) -> None:
        """An unchanged repository's oldest kept chain may have passed the retention."""
        keep_days = self.settings.run.keep_history_days
        if chains.may_expire(head, now(), keep_days):
            fresh = store.head(layout.bundle_key(login, name))  # an increment may have moved it
            if fresh is not None:
                history.prune_expired(store, login, name, fresh, now(), keep_days)

    @staticmethod
    def record_failure(store: FencedStore, login: str, name: str, head: Head | None,
                       error: str) -> Written:
        """Record ``error`` on the repository's archive: a good archive is never replaced
        by a failure, only its Error changes."""
        log.info("%s/%s: %s", login, name, error)
        key = layout.bundle_key(login, name)
        if head is not None and head.size > 0:
            store.replace_metadata(key, layout.updated_metadata(head, {ERROR: error}))
            return Written(WriteOutcome.FAILED, error=error)
        # Kept chains stay known (KeptSince) under a failure, for the retention to end.
        kept = {KEPT_SINCE: head.get(KEPT_SINCE)} if head and head.get(KEPT_SINCE) else {}
        store.put_bytes(key, b"", fitted({LAST_SYNC: format_rfc3339(now()), ERROR: error,
                                          **kept}))
        return Written(WriteOutcome.FAILED, bundle_size=0, error=error)
