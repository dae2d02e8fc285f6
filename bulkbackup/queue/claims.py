"""Claims and completions of users in `tracked` (docs/run.md "Claims"; DESIGN.md "Events").

Who is due: without events, every user scored below the run's start (as before events). Once
`events` has read an hour (keys.EVENTS_STATUS exists): users never synced, users marked by
events before the run's start, and users not listed in full for ``full_pass_days`` (and below
the run's start); the marked first. Priority users (keys.PRIORITY scored <= now) come before
everyone, events or not. A claim takes the user's marks aside (lua/marks.lua): a give back
puts them back, a sync drops them, and marks made during the sync are kept for the next one.

What each claimed user is due for (a `Claimed`, its `DueReason` and, for EVENTS_REFS, the
repositories whose refs moved) is returned by `claim_due` and kept in `Claimer.held` until
the user's completion: `Claimer.claimed_as(member)` answers without a round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import redis

from bulkbackup.archive.layout import UserCounts, short_reason
from bulkbackup.config import EventsSettings, ServeSettings
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts

DAY_S = 86_400
HOUR_S = 3600


class DueReason(IntEnum):
    """Why a user was claimed, which says what its sync must do (claim.lua's codes). Every
    reason but EVENTS_REFS needs a listing."""

    NEVER_SYNCED = 1  # -inf in `tracked`
    PRIORITY = 2  # a priority user (keys.PRIORITY) due
    EVENTS_LISTING = 3  # its events need a listing (a new repository, a fork, a release...)
    FULL_PASS = 4  # events are read, and its last full listing is older than the full pass
    EVENTS_REFS = 5  # only refs of repositories it has archived moved: `Claimed.repos`
    SCHEDULED = 6  # no events read: scored below the run's start (every user, every run)


@dataclass(frozen=True)
class Claimed:
    """One claimed user and what it is due for."""

    member: str
    reason: DueReason
    # EVENTS_REFS: the repositories (names within the owner) whose refs moved, at most
    # keys.EVENTS_REFS_MAX; empty otherwise.
    repos: tuple[str, ...] = ()

    @property
    def needs_listing(self) -> bool:
        return self.reason is not DueReason.EVENTS_REFS


@dataclass(frozen=True)
class ClaimBatch:
    claimed: list[Claimed]
    remaining: int  # users still due after this claim (an upper bound: see `Claimer.claim`)


class CompleteMode(IntEnum):
    """How complete.lua ends a claim (its ARGV[3])."""

    GIVE_BACK = 0  # score and marks restored: claimable again at once
    SYNCED = 1  # listed in full: score := now, marks dropped
    FAILED = 2  # given back, the failure counted (see `Claimer.fail`)
    # Synced from its events' repositories only, no listing: the score stays its last full
    # listing's time (restored as on a give back); otherwise as SYNCED (marks dropped,
    # failures cleared, counted in the per-minute figures, a priority user's next time set).
    SYNCED_REFS = 3


class Completion(IntEnum):
    """What complete.lua did (its return value)."""

    LOST = 0  # the lock was not ours: nothing changed
    DONE = 1  # completed, or given back for another attempt in this run
    DEFERRED = 2  # given back after its last allowed failure: left for the next run


@dataclass(frozen=True)
class _Due:
    """The due counts of one pipelined read (see `Claimer._queue_counts`)."""

    events: bool
    tracked: int
    priority: int
    marked: int

    @property
    def total(self) -> int:
        # A user due on two counts counts twice: an upper bound, exact when it is 0.
        return self.tracked + self.priority + self.marked


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
    # events.full_pass_days and serve.priority_hours (settings values, passed by the worker).
    full_pass_days: float = EventsSettings.full_pass_days
    priority_hours: float = ServeSettings.priority_hours
    # What each user claimed by this Claimer and not completed yet is due for.
    held: dict[str, Claimed] = field(default_factory=dict)

    def claim(self, n: int) -> tuple[list[str], int]:
        """(up to ``n`` due users, each now locked for this worker; users still due): see
        `claim_due`, whose reasons stay readable with `claimed_as`."""
        batch = self.claim_due(n)
        return [c.member for c in batch.claimed], batch.remaining

    def claim_due(self, n: int) -> ClaimBatch:
        """Up to ``n`` due users, each now locked for this worker, with what each is due for.

        Two round trips: a pipelined read of the candidates (expired leases of dead workers,
        due priority users, marked users, the lowest scores below the run's start), then one
        script that claims them. O(log N + batch). ``remaining`` counts a user due on two
        counts (e.g. never synced and marked) twice: exact when it is 0.
        """
        deferred = keys.deferred(self.run_start)
        start = f"({self.run_start!r}"
        while True:
            now = self._now()
            skip = self.deferred_seen
            pipe = self.r.pipeline(transaction=False)
            pipe.zrange(keys.LEASES, "-inf", now, byscore=True, offset=0, num=n)
            # Users this run gave up on keep their scores and marks at the front: read past
            # them (they are few).
            pipe.zrange(keys.PRIORITY, "-inf", now, byscore=True, offset=0, num=n + skip)
            pipe.zrange(keys.EVENTS_DUE, "-inf", start, byscore=True, offset=0, num=n + skip)
            pipe.zrange(keys.TRACKED, "-inf", start, byscore=True, offset=0, num=n + skip,
                        withscores=True)
            self._queue_counts(pipe, now)
            pipe.scard(deferred)
            expired, priority, marked, rows, *counts, seen = pipe.execute()
            due = self._due(now, counts)
            cutoff = self._cutoff(now, due.events)
            # Below the full pass's cutoff: a prefix of the rows below the run's start.
            oldest = [m for m, score in rows if score < cutoff]
            self.deferred_seen = int(seen)
            remaining = max(due.total - self.deferred_seen, 0)
            candidates = list(dict.fromkeys([*expired, *priority, *marked, *oldest]))
            claimed = self._claim_script(candidates, n) if candidates else []
            if claimed or self.deferred_seen <= skip:
                return ClaimBatch(claimed, max(remaining - len(claimed), 0))
            # More were given up on than this read stepped over: read again, further.

    def _claim_script(self, candidates: list[Any], n: int) -> list[Claimed]:
        members = [_text(m) for m in candidates]
        per_member: list[str] = []
        for m in members:
            per_member += [keys.lock(m), keys.events_refs(keys.login_of(m)), keys.taken(m),
                           keys.taken_refs(m)]
        result = self.scripts.claim(
            keys=[keys.TRACKED, keys.LEASES, keys.CLAIMS, keys.deferred(self.run_start),
                  keys.EVENTS_STATUS, keys.EVENTS_DUE, keys.EVENTS_LISTING, keys.PRIORITY,
                  *per_member],
            args=[self.run_start, self.worker_id, self.lock_ttl_s, n,
                  self.full_pass_days * DAY_S, keys.EVENTS_REFS_MAX, *members],
        )
        claimed = [Claimed(_text(member), DueReason(int(reason)),  # ValueError: out of step
                           tuple(sorted(_text(x) for x in repos)))
                   for member, reason, repos in result]
        self.held.update((c.member, c) for c in claimed)
        return claimed

    def claimed_as(self, member: str) -> Claimed | None:
        """What ``member``, claimed by this Claimer and not completed yet, is due for."""
        return self.held.get(member)

    def forget(self, member: str) -> None:
        """``member`` is no longer this worker's (its lock was lost): forget what it was due
        for, as a completion does."""
        self.held.pop(member, None)

    def _now(self) -> float:
        return time.time() + self.clock_offset_s

    def _cutoff(self, now: float, events: bool) -> float:
        """Users scored below this are due: the run's start, and once events are read, the
        last full listing older than the full pass too."""
        if not events:
            return self.run_start
        return min(self.run_start, now - self.full_pass_days * DAY_S)

    def _queue_counts(self, pipe: Any, now: float) -> None:
        """Five commands for `_due`, each O(log N)."""
        pipe.exists(keys.EVENTS_STATUS)
        pipe.zcount(keys.TRACKED, "-inf", f"({self.run_start!r}")
        pipe.zcount(keys.TRACKED, "-inf", f"({self._cutoff(now, True)!r}")
        pipe.zcount(keys.PRIORITY, "-inf", now)
        pipe.zcount(keys.EVENTS_DUE, "-inf", f"({self.run_start!r}")

    @staticmethod
    def _due(now: float, counts: list[Any]) -> _Due:
        events, below_start, below_cutoff, priority, marked = counts
        events = bool(int(events))
        return _Due(events, int(below_cutoff if events else below_start), int(priority),
                    int(marked))

    def finish(self, member: str, synced: bool, counts: str = "", repos: int = 0,
               nbytes: int = 0) -> Completion:
        """Synced (listed in full): score := now. Not synced: the score it had is restored.
        DONE, or LOST when the lock was no longer ours (nothing changed).

        ``counts`` (archive.layout.UserCounts, encoded) is cached for the stats pass in the same
        call; ``repos`` and ``nbytes`` (archived by this sync) go to the per-minute counters.
        """
        mode = CompleteMode.SYNCED if synced else CompleteMode.GIVE_BACK
        return self.complete(member, mode, counts, repos, nbytes)

    def finish_refs(self, member: str, counts: str = "", repos: int = 0,
                    nbytes: int = 0) -> Completion:
        """Synced from its events' repositories only (no listing): see CompleteMode."""
        return self.complete(member, CompleteMode.SYNCED_REFS, counts, repos, nbytes)

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
        return self.complete(member, CompleteMode.FAILED, max_attempts=max_attempts)

    def complete(self, member: str, mode: CompleteMode, counts: str = "", repos: int = 0,
                 nbytes: int = 0, max_attempts: int = 0) -> Completion:
        """End this worker's claim of ``member`` (one script call); see CompleteMode."""
        # The minute in Redis server time (the clock every host shares), for the rate key.
        minute = int(self._now() // 60)
        code = self.scripts.complete(
            keys=[keys.TRACKED, keys.LEASES, keys.CLAIMS, keys.lock(member), keys.SYNCD,
                  keys.FAILURES, keys.deferred(self.run_start), keys.rate(minute),
                  keys.EVENTS_DUE, keys.EVENTS_LISTING, keys.PRIORITY,
                  keys.events_refs(keys.login_of(member)), keys.taken(member),
                  keys.taken_refs(member)],
            args=[member, self.worker_id, int(mode), keys.login_of(member), counts,
                  max_attempts, keys.DEFERRED_TTL_S, repos, nbytes, keys.RATE_TTL_S,
                  self.priority_hours * HOUR_S, keys.EVENTS_REFS_MAX],
        )
        self.held.pop(member, None)
        return Completion(int(code))  # ValueError on anything else: a script out of step

    def remaining(self) -> int:
        """Users still due in this run (not counting those claimed right now, nor those it
        gave up on). A user due on two counts counts twice: exact when it is 0."""
        now = self._now()
        pipe = self.r.pipeline(transaction=False)
        self._queue_counts(pipe, now)
        pipe.smembers(keys.deferred(self.run_start))
        *counts, deferred = pipe.execute()
        due = self._due(now, counts)
        total = due.total
        if deferred:
            # Only those still due: another host's run may have synced one since.
            members = [_text(m) for m in deferred]
            cutoff = self._cutoff(now, due.events)
            pipe = self.r.pipeline(transaction=False)
            pipe.zmscore(keys.TRACKED, members)
            pipe.zmscore(keys.PRIORITY, members)
            pipe.zmscore(keys.EVENTS_DUE, members)
            scores, priority, marked = pipe.execute()
            total -= sum(1 for s in scores if s is not None and s < cutoff)
            total -= sum(1 for s in priority if s is not None and s <= now)
            total -= sum(1 for s in marked if s is not None and s < self.run_start)
        return max(total, 0)

    def in_flight(self) -> int:
        """Claimed users (anyone's) that were due in this run: the run waits for them. Due in
        this run: scored below its start before the claim, or claimed with marks or as a
        priority user (a taken hash: claims.lua took its marks)."""
        members: list[str] = list(self.r.zrange(keys.LEASES, 0, -1))  # type: ignore[arg-type]
        if not members:
            return 0
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(keys.CLAIMS, members)
        for m in members:
            pipe.exists(keys.taken(_text(m)))
        prev, *taken = pipe.execute()
        return sum(1 for p, t in zip(prev, taken, strict=True)
                   if p is None or float(p) < self.run_start or int(t))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
