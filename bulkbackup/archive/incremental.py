"""Store a changed repository as an increment on its chain, keep replaced chains as history,
and drop what the retention no longer needs (README "Incremental archives").

The order of writes is what makes a kill at any point harmless: an increment object is
written first under a key no reader follows yet, and becomes part of the archive only when
the base's metadata says `Increments: n+1` (one atomic metadata replace). A new full base
is written only after the chain it replaces was copied to history. Deletions come last and
touch only chains that no reader follows.
"""

from __future__ import annotations

import enum
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bulkbackup.archive import chains, layout
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
)
from bulkbackup.archive.proof import prove
from bulkbackup.archive.stored import ArchivePart
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError
from bulkbackup.git.bundles import BundleHeader, stored_header
from bulkbackup.git.gitops import GitWork
from bulkbackup.git.packfetch import FetchedIncrement, fetch_increment
from bulkbackup.store import Head
from bulkbackup.store.fenced import FencedStore
from bulkbackup.timeutil import format_rfc3339

log = logging.getLogger(__name__)


class IncrementOutcome(enum.Enum):
    STORED = "stored"  # an increment was committed
    SAME_REFS = "same refs"  # git has nothing new (only the API's times moved): recorded
    SUPERSEDED = "superseded"  # the base changed meanwhile (another writer): nothing written
    EMPTIED = "emptied"  # the remote has no refs left: the caller stores a full archive
    REFUSED = "refused"  # the increment does not apply on its chain: nothing written


@dataclass(frozen=True)
class Change:
    """What the API says about the repository now, and when this sync saw it."""

    clone_url: str
    default_branch: str | None
    pushed_at: str
    updated_at: str
    when: datetime  # when this sync saw it: LastSync of what is written, a new chain's id

    @property
    def stamp(self) -> str:
        return format_rfc3339(self.when)


@dataclass(frozen=True)
class IncrementResult:
    outcome: IncrementOutcome
    bytes: int = 0  # uploaded: the increment, and the zip when the default branch moved
    read_bytes: int = 0  # the chain's bytes read back from the store to prove the increment
    error: str = ""  # REFUSED: why


class Incremental:
    """Increments for one worker process (one per UserBackup)."""

    def __init__(self, settings: Settings, gitwork: GitWork) -> None:
        self.settings = settings
        self.gitwork = gitwork

    def archive(self, store: FencedStore, login: str, name: str, head: Head, change: Change,
                token: str | None) -> IncrementResult:
        """Fetch what is new since the state ``head`` (a base with data) describes, prove
        it applies on the chain (proof.py), and commit it as increment n+1 (REFUSED, nothing
        written, when it does not apply). Raises ArchiveError when the stored chain cannot be
        read (the caller then stores a full archive), GitError when the fetch fails."""
        chain, n = chains.chain_of(head), chains.committed(head)
        latest = layout.bundle_key(login, name) if n == 0 else layout.part_key(
            login, name, chain, n)
        old = stored_header(store, latest)
        dest = self.gitwork.user_dir(login) / f"{name}.increment.bundle"
        dest.parent.mkdir(parents=True, exist_ok=True)
        # With HEAD: a default branch that moved alone is a change too.
        old_refs = {**old.refs, "HEAD": old.head} if old.head else old.refs
        fetched = fetch_increment(change.clone_url, old_refs, change.default_branch, dest,
                                  self.settings.run, self.settings.github, token,
                                  store.fence.check)
        if not fetched.refs:
            return IncrementResult(IncrementOutcome.EMPTIED)
        base_key = layout.bundle_key(login, name)
        fresh = store.head(base_key)
        if fresh is None or (chains.chain_of(fresh), chains.committed(fresh)) != (chain, n):
            return IncrementResult(IncrementOutcome.SUPERSEDED)
        times = {LAST_SYNC: change.stamp, PUSHED_AT: change.pushed_at,
                 UPDATED_AT: change.updated_at}
        if fetched.bundle is None:
            # Chain too: a base from before increments must keep the id its LastSync gave.
            store.replace_metadata(base_key, layout.updated_metadata(fresh, {**times,
                                                                             CHAIN: chain}))
            return IncrementResult(IncrementOutcome.SAME_REFS)
        work = self.gitwork.user_dir(login) / f"{name}.proof"
        try:
            return self._commit(store, login, name, fresh, change, old, fetched, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _commit(self, store: FencedStore, login: str, name: str, fresh: Head, change: Change,
                old: BundleHeader, fetched: FetchedIncrement, work: Path) -> IncrementResult:
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
            return IncrementResult(IncrementOutcome.REFUSED, 0, proof.read_bytes,
                                   f"increment refused: {proof.error}")
        uploaded = self._zip(store, login, name, change, old, fetched, proof.repo)
        times = {LAST_SYNC: change.stamp, PUSHED_AT: change.pushed_at,
                 UPDATED_AT: change.updated_at}
        store.put_file(key, fetched.bundle, times)
        uploaded += fetched.bundle.stat().st_size
        # The commit: from here a restore applies increment n+1.
        total = chains.chain_bytes(fresh) + fetched.bundle.stat().st_size
        meta = layout.updated_metadata(fresh, {**times, CHAIN: chain, INCREMENTS: str(n + 1),
                                               CHAIN_BYTES: str(total), ERROR: ""})
        meta.pop(VERIFIED_AT, None)  # the new state has not been verified
        meta.pop(VERIFY_NOTES, None)
        fetched.bundle.unlink()  # a user's disk use is one repository's, not all of them
        store.replace_metadata(layout.bundle_key(login, name), meta)
        return IncrementResult(IncrementOutcome.STORED, uploaded, proof.read_bytes)

    @staticmethod
    def _committed(store: FencedStore, login: str, name: str, base: Head, n: int
                   ) -> list[ArchivePart]:
        """The base and its ``n`` committed increments; a missing one is an ArchiveError
        (the chain cannot be built on: the caller stores a full archive)."""
        out = [ArchivePart(layout.bundle_key(login, name), base.size)]
        if n:
            found = list_parts(store, login, name).chains.get(chains.chain_of(base), {})
            for seq in range(1, n + 1):
                key = layout.part_key(login, name, chains.chain_of(base), seq)
                if seq not in found:
                    raise ArchiveError(f"missing object {key}")
                out.append(ArchivePart(key, found[seq]))
        return out

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


def keep_history(store: FencedStore, login: str, name: str, head: Head | None,
                 parts: chains.StoredParts, keep_days: int) -> None:
    """Before a new base replaces ``head``: copy it to part 0 of its chain, so the chain's
    states stay restorable (`restore --at`). Its metadata goes with it (`Increments`);
    ``parts`` learns of the copy (it is the listing plan_prune decides from)."""
    if keep_days == 0 or head is None or not chains.has_archive(head):
        return
    chain = chains.chain_of(head)
    parts.add(chain, 0, head.size)
    meta_chain = head.get(CHAIN)
    key = layout.part_key(login, name, chain, 0)
    store.copy(layout.bundle_key(login, name), key)
    if meta_chain != chain:  # a base from before increments: name its chain on the copy
        copied = store.head(key)
        if copied is not None:
            store.replace_metadata(key, layout.updated_metadata(copied, {CHAIN: chain}))


def list_parts(store: FencedStore, login: str, name: str) -> chains.StoredParts:
    """Every part of every chain of ``login/name``: one listing."""
    parts = chains.StoredParts()
    for info in store.list(layout.parts_prefix(login, name)):
        key = layout.parse_key(info.key)
        if key.kind is layout.Kind.PART and (key.login, key.repo) == (login, name):
            parts.add(key.chain, key.seq, info.size)
    return parts


def plan_prune(parts: chains.StoredParts, current: str, now: datetime, keep_days: int
               ) -> tuple[list[str], str]:
    """(the chains to delete, the oldest kept chain left: `KeptSince`, "" for none)."""
    doomed = chains.expired(parts, current, now, keep_days)
    left = [c for c in parts.kept() if c not in doomed and c != current]
    return doomed, min(left, default="")


def delete_chains(store: FencedStore, login: str, name: str, parts: chains.StoredParts,
                  doomed: list[str]) -> None:
    """Delete every part of ``doomed``: only once no metadata names them (a kill midway
    leaves parts no reader follows, found again by the next listing)."""
    for chain in doomed:
        for seq in sorted(parts.chains[chain], reverse=True):  # part 0 last
            store.delete(layout.part_key(login, name, chain, seq))
        del parts.chains[chain]


def prune_expired(store: FencedStore, login: str, name: str, head: Head, now: datetime,
                  keep_days: int) -> None:
    """For a repository whose oldest kept chain may have passed the retention
    (`chains.may_expire`): list its parts, record the new `KeptSince`, delete the rest."""
    parts = list_parts(store, login, name)
    doomed, since = plan_prune(parts, chains.chain_of(head), now, keep_days)
    if since != head.get(KEPT_SINCE):
        meta = layout.updated_metadata(head, {KEPT_SINCE: since})
        if not since:
            meta.pop(KEPT_SINCE, None)
        store.replace_metadata(layout.bundle_key(login, name), meta)
    delete_chains(store, login, name, parts, doomed)
