"""What a worker needs from its queue (the protocol `WorkQueue`), and its Redis side.

A worker claims batches of due users, keeps the users it holds alive (every lock_ttl/2),
finishes, fails or gives them back, asks what is left, and fences each user's writes. Two
sides answer: `RedisQueue` (a local worker: tracked.Claimer and queue/locks.LockKeeper on
Redis) and run/remote_queue.RemoteQueue (`run --server`: the lease API of `serve`). The
worker (run/worker.py) only sees this protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import redis

from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError, Interrupted
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.queue import history, keys, listings, pending, tracked
from bulkbackup.queue.claims import ClaimBatch
from bulkbackup.queue.connection import Scripts, connect
from bulkbackup.queue.locks import LockKeeper
from bulkbackup.queue.tracked import Completion
from bulkbackup.store import Store, open_store
from bulkbackup.store.fenced import Fence

log = logging.getLogger(__name__)


class WorkQueue(Protocol):
    """The queue a worker process drains (one per process; its methods are thread safe
    where the worker's watch thread calls them: held, drop, finish)."""

    # Errors that mean "the queue did not answer now" (retried within run.redis_retry_s),
    # and every error of the queue (a give back that fails: the lease lapses on its own).
    transient: tuple[type[Exception], ...]
    errors: tuple[type[Exception], ...]
    # How long an idle worker waits between two polls for the run's last users.
    idle_wait_s: float
    # Whether listings can be handed over with their users (run/listing_share.py): a worker
    # then lists a full query of users whatever its share, and gives those beyond its share
    # back with their listing cached for the next claimant.
    shares_listings: bool

    def start(self) -> None:
        """Start keeping the held users alive (a thread refreshing them every ttl/2)."""

    def stop(self) -> None: ...

    def close(self) -> None:
        """Close its connections (after stop)."""

    def open_store(self) -> Store:
        """The store this worker writes to (closed by the worker)."""

    def broker(self, tokens: tuple[str, ...]) -> QuotaBroker:
        """The quota broker of this process's GitHub tokens."""

    def claim_due(self, n: int) -> ClaimBatch:
        """Up to ``n`` due users, now held for this worker (kept alive from now on)."""

    def take_listings(self, members: list[str], most: int) -> listings.Cached:
        """The listings handed over with the just claimed ``members``: those of the first
        ``most`` that have one, taken; which others have one (left for the next claimant)."""

    def store_listings(self, found: dict[str, bytes]) -> None:
        """Hand listings over (member -> encoded listing), before their users are given
        back with `finish(member, False)`."""

    def held(self) -> list[str]: ...

    def drop(self, member: str) -> None:
        """Stop keeping ``member`` (completed, given back, or lost)."""

    def fence(self, member: str) -> Fence:
        """The fence of ``member``'s writes."""

    def finish(self, member: str, synced: bool, counts: str = "", repos: int = 0,
               nbytes: int = 0, error: str = "") -> Completion:
        """Synced (listed in full), or given back (``synced`` false). ``error`` without
        ``counts``: a sync that listed nothing (the summary kept gets the error)."""

    def finish_refs(self, member: str, counts: str = "", repos: int = 0,
                    nbytes: int = 0) -> Completion:
        """Synced from its events' repositories only (queue/claims.CompleteMode.SYNCED_REFS)."""

    def fail(self, member: str, max_attempts: int) -> Completion: ...

    def drained(self) -> bool:
        """Nothing left to claim in this run, and nobody holds a user due in it."""

    def committed(self, login: str, repo: str) -> None:
        """An increment of ``login/repo`` was committed: `verify --sample` checks it first."""

    def note_done(self, repos: int, nbytes: int) -> None:
        """One user completed (the per-minute figures of /workers)."""

    def record_history(self, login: str, repos: int, nbytes: int, errors: int,
                       error: str) -> None:
        """A completed sync in the user's history (queue/history.py): best effort."""


class RedisQueue:
    """A local worker's queue: `tracked` in Redis (queue/claims.py), its locks kept by
    LockKeeper (which also writes this process's /workers heartbeat)."""

    transient: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
    errors: tuple[type[Exception], ...] = (redis.RedisError,)

    def __init__(self, settings: Settings, worker_id: str, run_start: float,
                 clock_offset_s: float) -> None:
        self.settings = settings
        self.r = connect(settings.redis)
        scripts = Scripts(self.r)
        ttl_s = settings.run.lock_ttl_s
        self.claimer = tracked.Claimer(self.r, scripts, worker_id, ttl_s, run_start,
                                       clock_offset_s,
                                       full_pass_days=settings.events.full_pass_days,
                                       priority_hours=settings.serve.priority_hours)
        self.keeper = LockKeeper(self.r, scripts, worker_id, ttl_s)
        # Short: a poll is two cheap Redis round trips.
        self.idle_wait_s = min(0.25, ttl_s / 8)
        self.scripts = scripts
        self.shares_listings = settings.run.listing_cache_s > 0

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self.keeper.stop()

    def close(self) -> None:
        self.r.close()

    def open_store(self) -> Store:
        return open_store(self.settings.store)

    def broker(self, tokens: tuple[str, ...]) -> QuotaBroker:
        # One view of every token's quota for all processes on all hosts, REST and GraphQL.
        return QuotaBroker(self.r, tokens)

    def claim_due(self, n: int) -> ClaimBatch:
        batch = self.claimer.claim_due(n)
        if batch.claimed:
            self.keeper.add([c.member for c in batch.claimed], time.monotonic())
        return batch

    def take_listings(self, members: list[str], most: int) -> listings.Cached:
        return listings.take(self.scripts, members, most)

    def store_listings(self, found: dict[str, bytes]) -> None:
        listings.store(self.r, found, self.settings.run.listing_cache_s)

    def held(self) -> list[str]:
        return self.keeper.held()

    def drop(self, member: str) -> None:
        self.keeper.drop(member)
        self.claimer.forget(member)  # a lost lock ends no claim through complete()

    def fence(self, member: str) -> Fence:
        return self.keeper.fence(member)

    def finish(self, member: str, synced: bool, counts: str = "", repos: int = 0,
               nbytes: int = 0, error: str = "") -> Completion:
        if error and not counts:
            counts = self.claimer.summary_with_error(keys.login_of(member), error)
        return self.claimer.finish(member, synced, counts, repos, nbytes)

    def finish_refs(self, member: str, counts: str = "", repos: int = 0,
                    nbytes: int = 0) -> Completion:
        return self.claimer.finish_refs(member, counts, repos, nbytes)

    def fail(self, member: str, max_attempts: int) -> Completion:
        return self.claimer.fail(member, max_attempts)

    def drained(self) -> bool:
        return (self.claimer.remaining() == 0 and self.claimer.in_flight() == 0
                # Read last: gone, Redis lost `tracked` (flushed, restarted) after the counts
                # above were read, and the parent is rebuilding it: wait for the users back.
                and bool(self.r.exists(keys.INTACT)))

    def committed(self, login: str, repo: str) -> None:
        try:
            pending.add(self.r, login, repo, time.time())
        except redis.RedisError as exc:  # verify's random sample still finds it
            log.warning("%s/%s: not marked pending verify: %s", login, repo, exc)

    def note_done(self, repos: int, nbytes: int) -> None:
        self.keeper.note_done(repos, nbytes)

    def record_history(self, login: str, repos: int, nbytes: int, errors: int,
                       error: str) -> None:
        try:
            history.record(self.r, login, history.entry(time.time(), repos, nbytes, errors,
                                                        error))
        except redis.RedisError as exc:
            log.warning("%s: sync not recorded in its history: %s", login, exc)


_T = TypeVar("_T")


def retrying(what: str, fn: Callable[[], _T], give_up_s: float,
              stop: threading.Event, transient: tuple[type[Exception], ...]) -> _T:
    """Call ``fn``, retrying the queue's ``transient`` errors (Redis connection errors,
    the server not answering) with backoff for up to ``give_up_s``."""
    deadline = time.monotonic() + give_up_s
    delay = 0.2
    while True:
        try:
            return fn()
        except transient as exc:
            if time.monotonic() + delay > deadline:
                raise BulkbackupError(f"the queue is unreachable during {what}: {exc}"
                                      ) from None
            log.warning("queue error during %s (retrying in %.1fs): %s", what, delay, exc)
            if stop.wait(delay):
                raise Interrupted("stopping") from None
            delay = min(delay * 2, 5.0)
