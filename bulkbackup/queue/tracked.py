"""The `tracked` sorted set: reset, rebuild's scores, counts (DESIGN.md "Redis"). Claims and
completion are in `bulkbackup.queue.claims` (Claimer and Completion are re-exported here).

Connections, the server's clock and the Lua scripts are in `bulkbackup.queue.connection`.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from bulkbackup.iterutil import chunks
from bulkbackup.names import is_login
from bulkbackup.queue import keys
from bulkbackup.queue.claims import Claimer, Completion
from bulkbackup.queue.connection import Scripts
from bulkbackup.queue.logins import index_pairs

__all__ = ["TRACK_BATCH", "Claimer", "Completion", "add_never_synced", "add_scores_gt",
           "counts", "index_for_search", "reset"]


def reset(r: redis.Redis) -> int:
    """Every score becomes 0 in one server-side step (the seed's "reset sync"): everyone is
    due again (with events read too: 0 is older than any full pass). Events' marks and
    priority users are left as they are."""
    pipe = r.pipeline(transaction=True)
    pipe.zunionstore(keys.TRACKED, {keys.TRACKED: 0})
    # Parked members' saved scores would otherwise bring old scores back on give-back.
    pipe.hkeys(keys.CLAIMS)
    _, claimed = pipe.execute()
    if claimed:
        r.hset(keys.CLAIMS, mapping=dict.fromkeys(claimed, 0))
    return int(r.zcard(keys.TRACKED))


def add_scores_gt(r: redis.Redis, scores: Iterable[tuple[str, float]], batch: int = 1000) -> int:
    """ZADD GT in pipelined batches: a member keeps a higher score it already has. The
    members that are not all lowercase go to the logins index too (keys.LOGINS: these are
    stored spellings, which `rebuild` trusts; the search index is `index_for_search`'s).

    Returns how many members were new.
    """
    added = 0
    pipe = r.pipeline(transaction=False)
    is_zadd: list[bool] = []  # per queued command: its reply counts new members

    def flush() -> int:
        replies = pipe.execute()
        new = sum(int(x) for x, counts in zip(replies, is_zadd, strict=True) if counts)
        is_zadd.clear()
        return new

    for chunk in chunks(scores, batch):
        pipe.zadd(keys.TRACKED, dict(chunk), gt=True)
        is_zadd.append(True)
        entries = dict(index_pairs(keys.login_of(m) for m, _ in chunk))
        if entries:
            pipe.hset(keys.LOGINS, mapping=entries)  # type: ignore[arg-type]
            is_zadd.append(False)
        if len(pipe) >= 16:
            added += flush()
    if len(pipe):
        added += flush()
    return added


def index_for_search(r: redis.Redis, batch: int = 1000) -> int:
    """Put every member of `tracked` in the search index (keys.SEARCH), then mark the index
    whole: what `rebuild` runs last, so the members tracked before the index existed (or
    before Redis lost it) are found too. One ZSCAN of `tracked`, ZADDs pipelined; members
    added meanwhile go in by track.lua. Returns how many logins were new to the index."""
    added = 0
    pipe = r.pipeline(transaction=False)
    for chunk in chunks(r.zscan_iter(keys.TRACKED, count=batch), batch):
        logins = [keys.login_of(m.decode() if isinstance(m, bytes) else str(m))
                  for m, _ in chunk]
        folded = dict.fromkeys((x.lower() for x in logins if is_login(x)), 0)
        if folded:
            pipe.zadd(keys.SEARCH, folded)
        if len(pipe) >= 16:
            added += sum(int(x) for x in pipe.execute())
    if len(pipe):
        added += sum(int(x) for x in pipe.execute())
    r.set(keys.SEARCH_WHOLE, 1)
    return added


def counts(r: redis.Redis) -> dict[str, int]:
    """Users tracked, never synced (-inf), and claimed right now (parked at +inf)."""
    pipe = r.pipeline(transaction=False)
    pipe.zcard(keys.TRACKED)
    pipe.zcount(keys.TRACKED, "-inf", "-inf")
    pipe.zcard(keys.LEASES)
    tracked, never, claimed = pipe.execute()
    return {"tracked": tracked, "never_synced": never, "claimed": claimed}


# Logins per call of track.lua (its unpack() of one argument per login stays well within Lua's
# stack); ingest splits its batches to this size too.
TRACK_BATCH = 1000


def add_never_synced(r: redis.Redis, logins: list[str]
                     ) -> tuple[list[str], list[tuple[str, str]]]:
    """Add ``logins`` (already validated) with ZADD NX -inf, as ingest does, one account one
    member (track.lua: logins ignore case): (added, already tracked: (login, the spelling it
    is tracked under))."""
    unique = list(dict.fromkeys(logins))
    script = Scripts(r).track
    added: list[str] = []
    existing: list[tuple[str, str]] = []
    for chunk in chunks(unique, TRACK_BATCH):
        found = script(keys=[keys.TRACKED, keys.LOGINS, keys.SEARCH],
                       args=[keys.MEMBER_PREFIX, "each", *chunk])
        for login, spelled in zip(chunk, found, strict=True):
            text = spelled.decode() if isinstance(spelled, bytes) else str(spelled)
            if text:
                existing.append((login, text))
            else:
                added.append(login)
    return added, existing
