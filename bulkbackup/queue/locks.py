"""Per-user locks kept alive by one refresher thread per worker process.

The lock itself (`lock:github.com/<login>`, value = worker id, EX ttl NX) is taken by the claim
script; this module keeps every lock the process holds alive with one compare-and-expire script
call per interval, and tells the worker, before each write, whether a lock is still its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
import redis

from bulkbackup.errors import LockLost
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts

log = logging.getLogger(__name__)


class LockKeeper:
    """Refreshes the process's locks every ttl/2; marks a lock lost the moment it is not ours."""

    def __init__(
        self,
        r: redis.Redis,
        scripts: Scripts,
        worker_id: str,
        lock_ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._r = r
        self._scripts = scripts
        self.worker_id = worker_id
        self.ttl_s = lock_ttl_s
        self._clock = clock
        self._mu = threading.Lock()
        # member -> local monotonic time until which the lock is known to be ours
        self._valid_until: dict[str, float] = {}
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Below this much validity left, a write asks Redis instead of trusting the refresher.
        self.margin_s = min(2.0, lock_ttl_s / 4)
        # For the heartbeat (see heartbeat()): when this process started, and what it
        # completed in the last minute: (unix time, repos, bytes) per user.
        self.started_at = time.time()
        self._done: deque[tuple[float, int, int]] = deque()

    def start(self) -> LockKeeper:
        self._thread = threading.Thread(target=self._run, name="lock-refresher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)

    def add(self, members: Iterable[str], claimed_at: float) -> None:
        """Start keeping ``members`` (claimed at local monotonic time ``claimed_at``)."""
        with self._mu:
            for m in members:
                self._valid_until[m] = claimed_at + self.ttl_s
                self._lost.discard(m)

    def drop(self, member: str) -> None:
        with self._mu:
            self._valid_until.pop(member, None)
            self._lost.discard(member)

    def held(self) -> list[str]:
        with self._mu:
            return list(self._valid_until)

    def is_lost(self, member: str) -> bool:
        with self._mu:
            return member in self._lost or member not in self._valid_until

    def check(self, member: str) -> None:
        """Raise LockLost unless ``member``'s lock is certainly still ours for a while."""
        with self._mu:
            lost = member in self._lost
            until = self._valid_until.get(member)
        if lost or until is None:
            raise LockLost(f"lock lost: {member}")
        if self._clock() < until - self.margin_s:
            return
        # The refresher is late (Redis slow, or this process was stopped): ask Redis now.
        self.refresh_once()
        if self.is_lost(member):
            raise LockLost(f"lock lost: {member}")
        with self._mu:
            until = self._valid_until.get(member, 0.0)
        if self._clock() >= until:
            raise LockLost(f"lock could not be refreshed in time: {member}")

    def confirm(self, member: str) -> None:
        """Raise LockLost unless Redis says now that ``member``'s lock is ours; extend it.

        One round trip (the refresh script for this one lock), made right before a write
        commits: a process that was stopped, or cut off from Redis, longer than the TTL learns
        it here, whatever its refresher last believed. On success the lock has a whole TTL
        left, counted from when the request left.
        """
        with self._mu:
            if member in self._lost or member not in self._valid_until:
                raise LockLost(f"lock lost: {member}")
        sent = self._clock()
        try:
            result = self._scripts.refresh(keys=[keys.LEASES, keys.lock(member)],
                                           args=[self.worker_id, self.ttl_s, member])
        except redis.RedisError as exc:
            raise LockLost(f"lock could not be confirmed: {member}: {exc}") from None
        with self._mu:
            if member not in self._valid_until:
                raise LockLost(f"lock dropped: {member}")
            if not int(result[0]):
                log.warning("lock lost: %s", member)
                del self._valid_until[member]
                self._lost.add(member)
                raise LockLost(f"lock lost: {member}")
            self._valid_until[member] = max(self._valid_until[member], sent + self.ttl_s)
        if self._clock() >= sent + self.ttl_s - self.margin_s:
            raise LockLost(f"lock confirmed too late to rely on: {member}")

    def fence(self, member: str) -> LockFence:
        """The fence of writes for ``member`` (see bulkbackup.store.fenced)."""
        return LockFence(self, member)

    def refresh_once(self) -> bool:
        """One compare-and-expire round for every held lock; False if Redis failed."""
        members = self.held()
        if not members:
            return True
        sent = self._clock()
        try:
            result = self._scripts.refresh(
                keys=[keys.LEASES, *map(keys.lock, members)],
                args=[self.worker_id, self.ttl_s, *members],
            )
        except redis.RedisError as exc:
            log.warning("lock refresh failed (will retry): %s", exc)
            return False
        with self._mu:
            for member, ok in zip(members, result, strict=True):
                if member not in self._valid_until:
                    continue  # dropped while the script ran
                if int(ok):
                    # Counted from when the request left: the server's TTL started no earlier.
                    self._valid_until[member] = sent + self.ttl_s
                else:
                    log.warning("lock lost: %s", member)
                    del self._valid_until[member]
                    self._lost.add(member)
        return True

    def note_done(self, repos: int, nbytes: int) -> None:
        """Count one completed user (for the heartbeat's per-minute figures)."""
        with self._mu:
            self._done.append((time.time(), repos, nbytes))

    def heartbeat(self) -> None:
        """Tell `bulkbackup serve` this process is alive, in one pipelined round trip: its
        figures under a key that expires on its own, and its last-seen time in a sorted set
        that the heartbeats themselves keep pruned. A failure only loses one beat."""
        now = time.time()
        with self._mu:
            while self._done and self._done[0][0] < now - 60:
                self._done.popleft()
            done = list(self._done)
            held = len(self._valid_until)
        host = self.worker_id.split(".", 2)[-1]
        figures = {"id": self.worker_id, "host": host, "since": int(self.started_at),
                   "seen": int(now), "users_per_min": len(done),
                   "repos_per_min": sum(d[1] for d in done),
                   "bytes_per_min": sum(d[2] for d in done), "users": held}
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.set(keys.worker(self.worker_id), orjson.dumps(figures), ex=keys.WORKER_TTL_S)
            pipe.zadd(keys.WORKERS, {self.worker_id: now})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now - 10 * keys.WORKER_TTL_S)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("heartbeat failed: %s", exc)

    def _run(self) -> None:
        interval = self.ttl_s / 2
        wait = interval
        self.heartbeat()
        while not self._stop.wait(wait):
            ok = self.refresh_once()
            self.heartbeat()
            # After a failure retry soon: a lock not refreshed within its ttl is gone.
            wait = interval if ok else min(1.0, interval / 4)
        self.deregister()

    def deregister(self) -> None:
        """A process that stops cleanly leaves `bulkbackup serve`'s list of workers at once
        (one that dies is dropped when its last heartbeat is a minute old)."""
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(keys.worker(self.worker_id))
            pipe.zrem(keys.WORKERS, self.worker_id)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("deregistering failed: %s", exc)


@dataclass(frozen=True)
class LockFence:
    """A Fence (bulkbackup.store.fenced) for one user's lock."""

    keeper: LockKeeper
    member: str

    def check(self) -> None:
        self.keeper.check(self.member)

    def confirm(self) -> None:
        self.keeper.confirm(self.member)


def refresh_locks(scripts: Scripts, worker_id: str, lock_ttl_s: int,
                  members: list[str]) -> list[bool]:
    """One refresh.lua call (as LockKeeper's): extend ``members``' locks where they are still
    ``worker_id``'s; per member whether it was. For the lease API of `serve`, which keeps
    remote workers' locks on their behalf."""
    result = scripts.refresh(keys=[keys.LEASES, *map(keys.lock, members)],
                             args=[worker_id, lock_ttl_s, *members])
    return [bool(int(x)) for x in result]
