"""History and retention of a repository's archive (README "Incremental archives"): a
replaced chain kept for `restore --at`, and the chains the retention (`run.keep_history_days`)
no longer needs deleted.

The order of writes is what makes a kill at any point harmless: a chain is copied to history
before a new base replaces it, and deletions come last and touch only chains that no
metadata names (a kill midway leaves parts no reader follows, found again by the next
listing). What to delete is decided by the pure rules of chains.py.
"""

from __future__ import annotations

from datetime import datetime

from bulkbackup.archive import chains, layout
from bulkbackup.archive.metadata import CHAIN, KEPT_SINCE
from bulkbackup.archive.stored import list_parts
from bulkbackup.store import Head
from bulkbackup.store.fenced import FencedStore


def keep_history(store: FencedStore, login: str, name: str, head: Head | None,
                 parts: chains.StoredParts, keep_days: int) -> None:
    """Before a new base replaces ``head``: copy it to part 0 of its chain, so the chain's
    states stay restorable (`restore --at`). Its metadata goes with it (`Increments`);
    ``parts`` learns of the copy (it is the listing plan_prune decides from)."""
    if keep_days == 0 or head is None or not chains.has_archive(head):
        return
    chain = chains.chain_of(head)
    parts.add(chain, 0, head.size)
    key = layout.part_key(login, name, chain, 0)
    store.copy(layout.bundle_key(login, name), key)
    if head.get(CHAIN) != chain:  # a base from before increments: name its chain on the copy
        copied = store.head(key)
        if copied is not None:
            store.replace_metadata(key, layout.updated_metadata(copied, {CHAIN: chain}))


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
