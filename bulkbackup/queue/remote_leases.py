"""The Redis side of `serve`'s lease API (DESIGN.md "Remote workers"): leases for remote
workers, on the same scripts as a local worker's (claim.lua through tracked.Claimer, refresh.lua
through locks.refresh_locks, complete.lua through Claimer.finish/fail): one set of rules.

A lease's worker id is `<rand>.<token name>.remote` (a new <rand> per lease call): the lock of
a leased user holds it, so "is this user leased by this token" is one GET. The token's leased
members are kept in a set (keys.worker_leases) so that a revoke can give them back at once;
the members it archived in another (keys.worker_archived) for `revoke --redo`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from bulkbackup.archive.layout import UserCounts
from bulkbackup.errors import LockLost
from bulkbackup.queue import history, keys, pending
from bulkbackup.queue.connection import Scripts, server_time
from bulkbackup.queue.locks import refresh_locks
from bulkbackup.queue.tracked import Claimer, Completion

REMOTE_SUFFIX = ".remote"
SCAN_BATCH = 500


def remote_worker_id(name: str) -> str:
    return f"{secrets.token_hex(6)}.{name}{REMOTE_SUFFIX}"


def token_of(worker_id: str) -> str:
    """The token name of a remote worker id; "" for a local worker's."""
    if not worker_id.endswith(REMOTE_SUFFIX):
        return ""
    parts = worker_id.split(".")
    return parts[1] if len(parts) == 3 else ""


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class RemoteLeases:
    """Leases of remote workers, for one `serve` process (its threads share it)."""

    r: redis.Redis
    scripts: Scripts
    lock_ttl_s: int
    max_attempts: int

    # Claimer's clock: Redis server time minus ours (read at first use: serve starts
    # without Redis).
    _offset_s: float | None = None

    def clock_offset_s(self) -> float:
        if self._offset_s is None:
            self._offset_s = server_time(self.r) - time.time()
        return self._offset_s

    def _claimer(self, worker_id: str, run_start: float) -> Claimer:
        return Claimer(r=self.r, scripts=self.scripts, worker_id=worker_id,
                       lock_ttl_s=self.lock_ttl_s, run_start=run_start,
                       clock_offset_s=self.clock_offset_s())

    def now(self) -> float:
        """Redis server time (unix s)."""
        return time.time() + self.clock_offset_s()

    def lease(self, name: str, n: int, run_start: float) -> tuple[str, list[str], int]:
        """(the lease's worker id, up to ``n`` members now locked for it, users still due)."""
        self.prune(name)
        wid = remote_worker_id(name)
        claimed, remaining = self._claimer(wid, run_start).claim(n)
        if claimed:
            self.r.sadd(keys.worker_leases(name), *claimed)
        return wid, claimed, remaining

    def status(self, run_start: float) -> tuple[int, int]:
        """(users still due in a run started at ``run_start``, users held by anyone that
        were due in it): a remote pool ends when both are 0, as a local one."""
        claimer = self._claimer(f"status{REMOTE_SUFFIX}", run_start)
        return claimer.remaining(), claimer.in_flight()

    def holder(self, name: str, member: str) -> str | None:
        """The worker id holding ``member``'s lock when it is one of ``name``'s leases."""
        wid = _text(self.r.get(keys.lock(member)))
        return wid if wid is not None and token_of(wid) == name else None

    def refresh(self, name: str, members: list[str]) -> tuple[list[str], list[str]]:
        """Extend ``name``'s leases of ``members``: (kept, lost)."""
        if not members:
            return [], []
        holders = self.r.mget([keys.lock(m) for m in members])
        by_wid: dict[str, list[str]] = {}
        lost: list[str] = []
        for member, raw in zip(members, holders, strict=True):
            wid = _text(raw)
            if wid is not None and token_of(wid) == name:
                by_wid.setdefault(wid, []).append(member)
            else:
                lost.append(member)
        kept: list[str] = []
        for wid, group in by_wid.items():
            for member, ok in zip(group, refresh_locks(self.scripts, wid, self.lock_ttl_s,
                                                       group), strict=True):
                (kept if ok else lost).append(member)
        if lost:
            self.r.srem(keys.worker_leases(name), *lost)
        return kept, lost

    def finish(self, name: str, member: str, synced: bool, counts: str, repos: int,
               nbytes: int, run_start: float, error: str = "",
               verify: Sequence[str] = ()) -> Completion:
        """Claimer.finish for the token's lease; ``error`` without ``counts``: a sync that
        listed nothing (the summary Redis has gets the error: Claimer.summary_with_error)."""
        wid = self.holder(name, member)
        if wid is None:
            return Completion.LOST
        claimer = self._claimer(wid, run_start)
        if error and not counts:
            counts = claimer.summary_with_error(keys.login_of(member), error)
        result = claimer.finish(member, synced, counts, repos, nbytes)
        self.r.srem(keys.worker_leases(name), member)
        if result is Completion.DONE and synced:
            self.r.sadd(keys.worker_archived(name), member)
            self._after_sync(member, counts, repos, nbytes, error, verify)
        return result

    def _after_sync(self, member: str, counts: str, repos: int, nbytes: int, error: str,
                    verify: Sequence[str]) -> None:
        """What a local worker writes to Redis itself after a sync, done here for a remote
        one (it has no Redis): the increments `verify --sample` checks first
        (queue/pending.py) and the user's history (queue/history.py)."""
        login, now = keys.login_of(member), self.now()
        for repo in verify:
            pending.add(self.r, login, repo, now)
        summary = UserCounts.decode(counts) if counts else None
        errors = int(bool(error) or (summary is not None and summary.error))
        history.record(self.r, login, history.entry(now, repos, nbytes, errors, error))

    def fail(self, name: str, member: str, run_start: float) -> Completion:
        wid = self.holder(name, member)
        if wid is None:
            return Completion.LOST
        result = self._claimer(wid, run_start).fail(member, self.max_attempts)
        self.r.srem(keys.worker_leases(name), member)
        return result

    def prune(self, name: str) -> None:
        """Forget members whose lease lapsed (their lock is not the token's any more)."""
        members = [m for m in (_text(x) for x in self.r.smembers(keys.worker_leases(name)))
                   if m is not None]
        if members:
            holders = self.r.mget([keys.lock(m) for m in members])
            stale = [m for m, h in zip(members, holders, strict=True)
                     if token_of(_text(h) or "") != name]
            if stale:
                self.r.srem(keys.worker_leases(name), *stale)

    def give_back_all(self, name: str) -> list[str]:
        """Give back every user ``name`` holds (its score restored, its lock deleted: claimable
        at once); the members given back."""
        key = keys.worker_leases(name)
        given: list[str] = []
        for raw in list(self.r.sscan_iter(key, count=SCAN_BATCH)):
            member = _text(raw) or ""
            if self.finish(name, member, False, "", 0, 0, 0.0) is Completion.DONE:
                given.append(member)
        self.r.delete(key)
        return given

    def redo(self, name: str) -> int:
        """Every member ``name`` archived becomes due again (score 0, as `reset` does; a member
        claimed right now gets 0 back at its give-back); the set is dropped. How many."""
        key = keys.worker_archived(name)
        count = 0
        batch: list[str] = []
        for raw in self.r.sscan_iter(key, count=SCAN_BATCH):
            batch.append(_text(raw) or "")
            if len(batch) >= SCAN_BATCH:
                count += self._due_again(batch)
                batch = []
        if batch:
            count += self._due_again(batch)
        self.r.delete(key)
        return count

    def _due_again(self, members: list[str]) -> int:
        # A member claimed right now stays parked at +inf (claims rely on it): its saved
        # score becomes 0 instead, restored at its give-back.
        prev = self.r.hmget(keys.CLAIMS, members)
        parked = [m for m, p in zip(members, prev, strict=True) if p is not None]
        pipe = self.r.pipeline(transaction=False)
        for m, p in zip(members, prev, strict=True):
            if p is None:
                pipe.zadd(keys.TRACKED, {m: 0}, xx=True, lt=True)
        if parked:
            pipe.hset(keys.CLAIMS, mapping=dict.fromkeys(parked, 0))
        pipe.execute()
        return len(members)

    def fence(self, name: str, member: str) -> LeaseFence:
        return LeaseFence(self, name, member)


@dataclass(frozen=True)
class LeaseFence:
    """A Fence (store/fenced.py) for a write made for a remote worker: the user's lock must
    still be the token's. `confirm` extends it in the same script call as a local worker's."""

    leases: RemoteLeases
    name: str
    member: str

    def check(self) -> None:
        if self.leases.holder(self.name, self.member) is None:
            raise LockLost(f"lease lost: {self.member}")

    def confirm(self) -> None:
        wid = self.leases.holder(self.name, self.member)
        if wid is None or not refresh_locks(self.leases.scripts, wid, self.leases.lock_ttl_s,
                                            [self.member])[0]:
            raise LockLost(f"lease lost: {self.member}")
