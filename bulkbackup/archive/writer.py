"""The one archive writer: a changed repository stored as an increment on its chain when it
can be one, else as a full archive (zip, the replaced chain kept as history, the new full
bundle last: the commit); failures recorded on the archive without ever replacing a good one.

It knows the archive's format and the store, not the forge: what it is told about the
repository is a `Change` (clone URL, default branch, the forge's times). `backup/` lists,
decides what changed and calls it; every write goes through the user's FencedStore.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bulkbackup.archive import chains, layout
from bulkbackup.archive.incremental import (
    Change,
    Incremental,
    IncrementOutcome,
    delete_chains,
    keep_history,
    list_parts,
    plan_prune,
    prune_expired,
)
from bulkbackup.archive.layout import EMPTY_REPOSITORY
from bulkbackup.archive.metadata import (
    CHAIN,
    ERROR,
    INCREMENTS,
    KEPT_SINCE,
    LAST_SYNC,
    PUSHED_AT,
    UPDATED_AT,
    fitted,
)
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError, GitError, InvalidName
from bulkbackup.git.gitops import Archive, GitWork
from bulkbackup.store.base import Head
from bulkbackup.store.fenced import FencedStore
from bulkbackup.timeutil import format_rfc3339, now

log = logging.getLogger(__name__)


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


class ArchiveWriter:
    """Writes the archives of one worker process (one per UserBackup)."""

    def __init__(self, settings: Settings, gitwork: GitWork,
                 committed: Callable[[str, str], None] | None = None) -> None:
        """``committed(login, repo)``: told of each increment committed (a run's worker
        marks it pending verify: queue/pending.py)."""
        self.settings = settings
        self.gitwork = gitwork
        self.incremental = Incremental(settings, gitwork)
        self.committed = committed

    def write(self, store: FencedStore, login: str, name: str, change: Change,
              head: Head | None, token: str | None) -> Written:
        """Store the changed repository ``login/name`` (``head``: its full bundle now)."""
        if (head is not None and not head.get(ERROR).startswith(layout.VERIFY_FAILED)
                and chains.next_step(head, self.settings.run) is chains.Step.INCREMENT):
            done = self._increment(store, login, name, change, head, token)
            if done is not None:
                return done
        return self._full(store, login, name, change, head, token)

    def _increment(self, store: FencedStore, login: str, name: str, change: Change,
                   head: Head, token: str | None) -> Written | None:
        """None: a full archive is needed (the repository was emptied, or its stored chain
        cannot be read)."""
        try:
            done = self.incremental.archive(store, login, name, head, change, token)
        except (GitError, InvalidName) as exc:
            return self.record_failure(store, login, name, head, str(exc))
        except ArchiveError as exc:
            log.warning("%s/%s: a full archive instead of an increment: %s", login, name, exc)
            return None
        if done.outcome is IncrementOutcome.EMPTIED:
            return None
        if done.outcome is IncrementOutcome.REFUSED:
            # The old state stays the newest; its PushedAt/UpdatedAt are the old ones, so
            # the next pass fetches again.
            failed = self.record_failure(store, login, name, head, done.error)
            return Written(WriteOutcome.FAILED, 0, done.read_bytes, failed.bundle_size, done.error)
        self.prune_expired(store, login, name, head)
        if done.outcome is IncrementOutcome.STORED:
            if self.committed is not None:
                self.committed(login, name)
            return Written(WriteOutcome.ARCHIVED, done.bytes, done.read_bytes)
        return Written(WriteOutcome.UNCHANGED, 0, done.read_bytes)

    def _full(self, store: FencedStore, login: str, name: str, change: Change,
              head: Head | None, token: str | None) -> Written:
        """Mirror the repository and store its archives (the bundle last)."""
        try:
            archive = self.gitwork.archive(login, name, change.clone_url, change.default_branch,
                                           token, store.fence.check)
        except (GitError, InvalidName) as exc:
            return self.record_failure(store, login, name, head, str(exc))
        fresh = store.head(layout.bundle_key(login, name))
        if fresh is not None and fresh.size > 0 and chains.newer_than(
                fresh, change.pushed_at, change.updated_at):
            # Another worker stored a newer archive meanwhile: never go back in time.
            return Written(WriteOutcome.UNCHANGED)
        if (archive.bundle is None and fresh is not None and fresh.size > 0
                and self.settings.run.keep_history_days == 0):
            # Without history, the last archive with data is all there is: keep it.
            return self.record_failure(store, login, name, fresh, EMPTY_REPOSITORY)
        return self._store_full(store, login, name, change, archive, fresh)

    def _store_full(self, store: FencedStore, login: str, name: str, change: Change,
                    archive: Archive, fresh: Head | None) -> Written:
        """Zip, the replaced chain kept as history, the new full bundle (the commit), then
        what the retention no longer needs is deleted."""
        key = layout.bundle_key(login, name)
        keep_days = self.settings.run.keep_history_days
        meta = {LAST_SYNC: change.stamp, PUSHED_AT: change.pushed_at,
                UPDATED_AT: change.updated_at, CHAIN: chains.new_chain(fresh, change.when),
                INCREMENTS: "0"}
        parts = list_parts(store, login, name) if fresh is not None else chains.StoredParts()
        uploaded = 0
        if archive.zip is not None:
            store.put_file(layout.zip_key(login, name), archive.zip, {LAST_SYNC: change.stamp})
            uploaded += archive.zip.stat().st_size
            archive.zip.unlink()  # a user's disk use is one repository's at a time
        if archive.bundle is None and fresh is not None and fresh.size == 0:
            meta[CHAIN] = fresh.get(CHAIN) or meta[CHAIN]  # empty before too: the same chain
        else:
            keep_history(store, login, name, fresh, parts, keep_days)
        doomed, kept_since = plan_prune(parts, meta[CHAIN], now(), keep_days)
        if kept_since:
            meta[KEPT_SINCE] = kept_since
        if archive.bundle is None:
            store.put_bytes(key, b"", {**meta, ERROR: EMPTY_REPOSITORY})
            delete_chains(store, login, name, parts, doomed)
            return Written(WriteOutcome.EMPTY, uploaded, bundle_size=0)
        # The bundle goes last: its PushedAt/UpdatedAt say the archives are complete.
        store.put_file(key, archive.bundle, meta)
        size = archive.bundle.stat().st_size
        archive.bundle.unlink()
        delete_chains(store, login, name, parts, doomed)
        return Written(WriteOutcome.ARCHIVED, uploaded + size, bundle_size=size)

    def prune_expired(self, store: FencedStore, login: str, name: str, head: Head) -> None:
        """An unchanged repository's oldest kept chain may have passed the retention."""
        keep_days = self.settings.run.keep_history_days
        if chains.may_expire(head, now(), keep_days):
            fresh = store.head(layout.bundle_key(login, name))  # an increment may have moved it
            if fresh is not None:
                prune_expired(store, login, name, fresh, now(), keep_days)

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
