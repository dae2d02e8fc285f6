"""One worker process of `bulkbackup run`: claim users in batches, back each up under its lock.

A worker receives settings, never live clients: it builds its own Redis, store and HTTP
clients. It reports to the parent through its own pipe and never prints.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import TypeVar

import redis

from bulkbackup import gitops, keys, tracked
from bulkbackup.backup import UserBackup, UserResult, work_dir
from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError, Interrupted, LockLost
from bulkbackup.github import GitHub
from bulkbackup.gitops import GitWork
from bulkbackup.locks import LockKeeper
from bulkbackup.redact import install_redaction
from bulkbackup.store import open_store

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Longest wait between two users while every attempt fails (see Worker._back_off).
MAX_BACKOFF_S = 60.0

# Report kinds sent to the parent: (kind, worker index, payload...)
DONE = "done"      # (DONE, i, login, repos, archived, bytes, error: bool)
LOST = "lost"      # (LOST, i, login)
GIVEN_BACK = "back"  # (GIVEN_BACK, i, login)
DEFERRED = "deferred"  # (DEFERRED, i, login): failed max_attempts times, left for the next run
FAILED = "failed"  # (FAILED, i, message): the worker gives up (e.g. Redis unreachable)


@dataclass(frozen=True)
class WorkerArgs:
    settings: Settings
    index: int
    worker_id: str
    run_start: float
    clock_offset_s: float
    procs: int


class BatchSizer:
    """Claim batch size from measured throughput.

    Rule: a batch holds about ``target_s`` seconds of this process's work (EWMA of seconds
    per user), at least 1 and at most ``batch_max``; and never more than a 1/(2*procs) share
    of the users still due, so at the end of a run no process sits on a queue others could
    be draining.
    """

    def __init__(self, target_s: float, batch_max: int, procs: int) -> None:
        self.target_s = target_s
        self.batch_max = batch_max
        self.procs = procs
        self.s_per_user: float | None = None

    def observe(self, seconds: float) -> None:
        alpha = 0.2
        self.s_per_user = (seconds if self.s_per_user is None
                           else alpha * seconds + (1 - alpha) * self.s_per_user)

    def size(self, remaining: int | None) -> int:
        if self.s_per_user is None:
            n = min(4, self.batch_max)
        else:
            n = int(self.target_s / max(self.s_per_user, 1e-3))
        if remaining is not None:
            n = min(n, math.ceil(remaining / (2 * self.procs)))
        return max(1, min(n, self.batch_max))


def _retrying(what: str, fn: Callable[[], _T], give_up_s: float,
              stop: threading.Event) -> _T:
    """Call ``fn``, retrying Redis connection errors with backoff for up to ``give_up_s``."""
    deadline = time.monotonic() + give_up_s
    delay = 0.2
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise BulkbackupError(f"redis unreachable during {what}: {exc}") from None
            log.warning("redis error during %s (retrying in %.1fs): %s", what, delay, exc)
            if stop.wait(delay):
                raise Interrupted("stopping") from None
            delay = min(delay * 2, 5.0)


def worker_main(args: WorkerArgs, reports: Connection,
                graceful: ctypes.c_bool, budget: Synchronized[int]) -> None:
    """Entry point of a worker process."""
    # The parent decides when to stop: a terminal's Ctrl-C reaches the whole process group,
    # and must not cut a user short here. SIGUSR1 is the parent's "stop at once".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def hard_stop(_sig: int, _frame: object) -> None:
        gitops.kill_all()
        os._exit(1)

    signal.signal(signal.SIGUSR1, hard_stop)
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s worker {args.index}: %(message)s")
    install_redaction(args.settings.github.tokens)
    try:
        Worker(args, reports, graceful, budget).run()
    except BulkbackupError as exc:
        reports.send((FAILED, args.index, str(exc)))
        raise SystemExit(3) from None


class Worker:
    def __init__(self, args: WorkerArgs, reports: Connection,
                 graceful: ctypes.c_bool, budget: Synchronized[int]) -> None:
        s = args.settings
        self.args = args
        self.reports = reports
        self.graceful = graceful
        self.budget = budget
        self.stop = threading.Event()  # set when the parent asks for a graceful stop
        self.r = tracked.connect(s.redis)
        scripts = tracked.Scripts(self.r)
        self.claimer = tracked.Claimer(self.r, scripts, args.worker_id, s.run.lock_ttl_s,
                                       args.run_start, args.clock_offset_s)
        self.keeper = LockKeeper(self.r, scripts, args.worker_id, s.run.lock_ttl_s)
        self.sizer = BatchSizer(s.run.claim_target_s, s.run.claim_batch_max, args.procs)
        self.queue: deque[str] = deque()
        self.failures_in_a_row = 0  # store or Redis failures since the last user that worked

    def run(self) -> None:
        s = self.args.settings
        threading.Thread(target=self._watch_graceful, daemon=True).start()
        store = open_store(s.store)
        github = GitHub(s.github, stop=self.stop)
        self.keeper.start()
        try:
            with work_dir(s, f"w{self.args.index}") as path:
                job = UserBackup(s, store, github, GitWork(s.run, s.github, path))
                self._loop(job)
        finally:
            self._give_back_queue()
            self.keeper.stop()
            github.close()
            store.close()

    def _watch_graceful(self) -> None:
        # Polled, not a multiprocessing.Event: a process that dies while waiting on one
        # leaves its Condition expecting a wake-up, and the parent's set() then hangs forever.
        while not self.stop.wait(0.1):
            if self.graceful.value:
                self.stop.set()

    def _unlimited(self) -> bool:
        # Read without the lock (-1 never changes): without --max-users no worker ever takes
        # it, so one killed while holding it cannot block the others.
        return bool(self.budget.get_obj().value < 0)

    def _take_budget(self, n: int) -> int:
        if self._unlimited():
            return n
        with self.budget.get_lock():
            n = min(n, self.budget.value)
            self.budget.value -= n
            return n

    def _return_budget(self, n: int) -> None:
        if self._unlimited() or n == 0:
            return
        with self.budget.get_lock():
            self.budget.value += n

    def _claim(self, remaining: int | None) -> tuple[list[str], int]:
        want = self._take_budget(self.sizer.size(remaining))
        if want == 0:
            return [], 0
        claimed, left = _retrying("claim", lambda: self.claimer.claim(want),
                                  self.args.settings.run.redis_retry_s, self.stop)
        self._return_budget(want - len(claimed))
        if claimed:
            self.keeper.add(claimed, time.monotonic())
        return claimed, left

    def _loop(self, job: UserBackup) -> None:
        remaining: int | None = None
        # Short: at the end of a run every idle worker waits here for the last users.
        idle_wait = min(0.25, self.args.settings.run.lock_ttl_s / 8)
        while not self.stop.is_set():
            if not self.queue:
                claimed, remaining = self._claim(remaining)
                if not claimed:
                    if self._drained():
                        return
                    # Others hold the last users; if one dies its lease expires and is ours.
                    self.stop.wait(idle_wait)
                    continue
                self.queue.extend(claimed)
            self._one(job, self.queue.popleft())

    def _drained(self) -> bool:
        if not self._unlimited():
            with self.budget.get_lock():
                if self.budget.value == 0:
                    return True
        rs = self.args.settings.run.redis_retry_s
        return (_retrying("claim", self.claimer.remaining, rs, self.stop) == 0
                and _retrying("claim", self.claimer.in_flight, rs, self.stop) == 0)

    def _one(self, job: UserBackup, member: str) -> None:
        login = keys.login_of(member)
        started = time.monotonic()

        def check() -> None:
            self.keeper.check(member)

        try:
            result = job.sync(login, check)
        except LockLost:
            self.keeper.drop(member)
            self.reports.send((LOST, self.args.index, login))
            return
        except Interrupted:
            self._give_back(member)
            return
        except BulkbackupError as exc:
            # The store or Redis failed for this user: give it back for a later attempt, in
            # this run (an outage passes) or, once it has failed max_attempts times, the next.
            self._give_back(member, str(exc))
            self._back_off()
            return
        except Exception as exc:  # one user's bug must not stop the whole run
            # Given back, it would be claimed again at once, forever; so it completes with
            # the error recorded on its object, and the next run tries it again.
            log.exception("%s: internal error", login)
            result = UserResult(login, error=f"internal error: {type(exc).__name__}")
            try:
                job.record_error(login, result.error, lambda: self.keeper.check(member))
            except BulkbackupError as again:
                log.warning("%s: could not record the error: %s", login, again)
        self.failures_in_a_row = 0
        self.sizer.observe(time.monotonic() - started)
        rs = self.args.settings.run.redis_retry_s
        counts = result.counts()
        cached = counts.encode() if counts is not None else ""
        finished = _retrying("complete", lambda: self.claimer.finish(
            member, True, cached, result.archived, result.bytes), rs, threading.Event())
        self.keeper.drop(member)
        self.keeper.note_done(result.archived, result.bytes)
        if not finished:
            self.reports.send((LOST, self.args.index, login))
            return
        self.reports.send((DONE, self.args.index, login, result.reported, result.archived,
                          result.bytes, bool(result.error)))

    def _give_back(self, member: str, failure: str = "") -> None:
        login = keys.login_of(member)
        code = 1
        try:
            if failure:
                code = self.claimer.fail(member, self.args.settings.run.max_attempts)
            else:
                self.claimer.finish(member, False)
        except redis.RedisError as exc:
            log.warning("could not give %s back (its lock will expire): %s", member, exc)
        self.keeper.drop(member)
        if code == 2:
            log.warning("%s: %s (failed %d times in a row: left for the next run)", login,
                        failure, self.args.settings.run.max_attempts)
            self.reports.send((DEFERRED, self.args.index, login))
            return
        if failure:
            log.warning("%s: %s (given back for another attempt)", login, failure)
        self.reports.send((GIVEN_BACK, self.args.index, login))

    def _back_off(self) -> None:
        """After a failure: wait 1, 2, 4 ... up to MAX_BACKOFF_S seconds while failures follow
        each other. During an outage, each user then costs an attempt every minute rather than
        every second, so few reach run.max_attempts before the store comes back; the users
        this process holds go back first, for processes that still succeed."""
        self.failures_in_a_row += 1
        delay_s = min(MAX_BACKOFF_S, 2.0 ** (self.failures_in_a_row - 1))
        if self.failures_in_a_row > 1:
            self._give_back_queue()
        self.stop.wait(delay_s)

    def _give_back_queue(self) -> None:
        while self.queue:
            self._give_back(self.queue.popleft())
