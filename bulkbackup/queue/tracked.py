"""The `tracked` sorted set: claims, completion, reset, rebuild's scores (DESIGN.md "Redis").

Connections, the server's clock and the Lua scripts are in `bulkbackup.queue.connection`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import IntEnum

import redis

from bulkbackup.archive.layout import UserCounts, short_reason
from bulkbackup.iterutil import chunks
from bulkbackup.logins import index_pairs
from bulkbackup.names import is_login
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts


@dataclass
class Claimer:
    """Claims batches of due users for one worker id."""

    r: redis.Redis
    scripts: Scripts
    worker_id: str
    lock_ttl_s: int
    run_start: float
    # Server time minus local time: leases are in server time, shared by all machines.
    clock_offset_s: float = 0.0
    # Members this run gave up on (see complete.lua), as of the last claim.
    deferred_seen: int = 0

    def claim(self, n: int) -> tuple[list[str], int]:
        """(up to ``n`` due users, each now locked for this worker; users still due).

        Two round trips: a pipelined read of the candidates (lowest scores below the run's
        start, and expired leases of dead workers), then one script that claims them.
        """
        deferred = keys.deferred(self.run_start)
        while True:
            now = time.time() + self.clock_offset_s
            skip = self.deferred_seen
            pipe = self.r.pipeline(transaction=False)
            pipe.zrange(keys.LEASES, "-inf", now, byscore=True, offset=0, num=n)
            # Users this run gave up on keep their scores at the front: read past them
            # (they are few).
            pipe.zrange(keys.TRACKED, "-inf", f"({self.run_start}", byscore=True, offset=0,
                        num=n + skip)
            pipe.zcount(keys.TRACKED, "-inf", f"({self.run_start}")
            pipe.scard(deferred)
            expired, due, count, seen = pipe.execute()
            self.deferred_seen = int(seen)
            remaining = max(int(count) - self.deferred_seen, 0)
            candidates = list(dict.fromkeys([*expired, *due]))
            claimed: list[str] = []
            if candidates:
                result = self.scripts.claim(
                    keys=[keys.TRACKED, keys.LEASES, keys.CLAIMS, deferred,
                          *map(keys.lock, candidates)],
                    args=[self.run_start, self.worker_id, self.lock_ttl_s, n, *candidates],
                )
                claimed = [str(m) for m in result]
            if claimed or self.deferred_seen <= skip:
                return claimed, max(remaining - len(claimed), 0)
            # More were given up on than this read stepped over: read again, further.

    def finish(self, member: str, synced: bool, counts: str = "", repos: int = 0,
               nbytes: int = 0) -> Completion:
        """Synced: score := now. Not synced: the score it had is restored. DONE, or LOST when
        the lock was no longer ours (nothing changed).

        ``counts`` (archive.layout.UserCounts, encoded) is cached for the stats pass in the same
        call; ``repos`` and ``nbytes`` (archived by this sync) go to the per-minute counters.
        """
        return self._complete(member, 1 if synced else 0, counts, 0, repos, nbytes)

    def summary_with_error(self, login: str, error: str) -> str:
        """For ``finish``: the user's summary with ``error`` as its reason, for a sync that
        listed nothing (gone, the API failing: its object keeps its counts and gets the
        Error); "" (leave it) when Redis has none, so the users list reads the object.

        Read apart from the completion: only the lock holder writes the summary, but for the
        stats pass, which checks it against the store's listing on every pass."""
        counts = UserCounts.decode(self.r.hget(keys.SYNCD, login))  # type: ignore[arg-type]
        if counts is None:
            return ""
        return replace(counts, error=True, reason=short_reason(error)).encode()

    def fail(self, member: str, max_attempts: int) -> Completion:
        """Give back after a failure: DONE (retried in this run), DEFERRED (its
        ``max_attempts``-th failure in a row: left for the next run), or LOST."""
        return self._complete(member, 2, "", max_attempts)

    def _complete(self, member: str, mode: int, counts: str, max_attempts: int = 0,
                  repos: int = 0, nbytes: int = 0) -> Completion:
        # The minute in Redis server time (the clock every host shares), for the rate key.
        minute = int((time.time() + self.clock_offset_s) // 60)
        code = self.scripts.complete(
            keys=[keys.TRACKED, keys.LEASES, keys.CLAIMS, keys.lock(member), keys.SYNCD,
                  keys.FAILURES, keys.deferred(self.run_start), keys.rate(minute)],
            args=[member, self.worker_id, mode, keys.login_of(member), counts, max_attempts,
                  keys.DEFERRED_TTL_S, repos, nbytes, keys.RATE_TTL_S],
        )
        return Completion(int(code))  # ValueError on anything else: a script out of step

    def remaining(self) -> int:
        """Users still due in this run (not counting those claimed right now, nor those it
        gave up on)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcount(keys.TRACKED, "-inf", f"({self.run_start}")
        pipe.smembers(keys.deferred(self.run_start))
        count, deferred = pipe.execute()
        if deferred:
            # Only those still due: another host's run may have synced one since.
            scores = self.r.zmscore(keys.TRACKED, list(deferred))
            count -= sum(1 for s in scores if s is not None and s < self.run_start)
        return max(int(count), 0)

    def in_flight(self) -> int:
        """Claimed users (anyone's) that were due in this run: the run waits for them."""
        members: list[str] = list(self.r.zrange(keys.LEASES, 0, -1))  # type: ignore[arg-type]
        if not members:
            return 0
        prev = self.r.hmget(keys.CLAIMS, members)
        return sum(1 for p in prev if p is None or float(p) < self.run_start)


class Completion(IntEnum):
    """What complete.lua did (its return value)."""

    LOST = 0  # the lock was not ours: nothing changed
    DONE = 1  # completed, or given back for another attempt in this run
    DEFERRED = 2  # given back after its last allowed failure: left for the next run


def reset(r: redis.Redis) -> int:
    """Every score becomes 0 in one server-side step (the seed's "reset sync")."""
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
