"""One worker process of `bulkbackup run`: claim users in batches, back each up under its lock.

A worker receives settings, never live clients: it builds its own queue (Redis, or the lease
API of `serve` for `run --server`: run/work_queue.py), store and HTTP clients. It reports to
the parent through its own pipe (typed reports) and never prints. When the parent dies
(SIGKILL, a crash) it gives its users back and exits quietly.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

from bulkbackup.backup.results import UserResult
from bulkbackup.backup.user_backup import UserBackup
from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError, ConfigError, Interrupted, LockLost, RateLimited
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.github_lister import open_github_lister
from bulkbackup.forge.listing import (
    Conditions,
    Lister,
    ListerFactory,
    ListingOutcome,
    OwnerListing,
)
from bulkbackup.forge.listing_feed import ListingFeed
from bulkbackup.git import gitops
from bulkbackup.git.gitops import GitWork
from bulkbackup.queue import keys
from bulkbackup.queue.claims import Claimed
from bulkbackup.queue.tracked import Completion
from bulkbackup.redact import install_redaction
from bulkbackup.run.batching import BatchSizer, UserBudget
from bulkbackup.run.listing_share import ListingShare
from bulkbackup.run.parent_watch import ParentWatch
from bulkbackup.run.parentdeath import ParentDeath
from bulkbackup.run.relay_host import relay_client
from bulkbackup.run.remote_queue import RemoteQueue, RemoteTarget
from bulkbackup.run.reports import (
    Deferred,
    Failed,
    GivenBack,
    Lost,
    Report,
    Synced,
    WorkerExit,
)
from bulkbackup.run.work_queue import RedisQueue, WorkQueue, retrying
from bulkbackup.store import Store
from bulkbackup.workdir import work_dir

log = logging.getLogger(__name__)

# Longest wait between two users while every attempt fails (see Worker._back_off).
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class WorkerArgs:
    settings: Settings
    index: int
    worker_id: str
    run_start: float
    clock_offset_s: float
    procs: int
    # `run --server`: the lease API in place of Redis and the store (run/remote_queue.py).
    remote: RemoteTarget | None = None
    # The run's own process. A worker forked just as the run died is re-parented before it
    # can arm its parent-death signal or read its parent's pid: it watches this one too.
    run_pid: int = 0
    # This worker's pipe to the run's GraphQL relay (run/relay_host.py), if it has one.
    relay: Connection | None = None

    def open_queue(self) -> WorkQueue:
        if self.remote is not None:
            return RemoteQueue(self.remote, self.run_start, self.settings.run.lock_ttl_s)
        return RedisQueue(self.settings, self.worker_id, self.run_start, self.clock_offset_s)


def worker_main(args: WorkerArgs, reports: Connection,
                graceful: ctypes.c_bool, budget: Synchronized[int]) -> None:
    """Entry point of a worker process."""
    # The parent decides when to stop: a terminal's Ctrl-C, and `kill -- -PGID`, systemd
    # or `timeout` with SIGTERM reach the whole process group and must not cut a user short
    # here. The fork server hands them to us ignored and blocked (see runner._start_fork_server),
    # so there is no moment when they could kill this process. SIGUSR1 is "stop at once".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def hard_stop(_sig: int, _frame: object) -> None:
        gitops.kill_all()
        os._exit(WorkerExit.STOPPED)

    signal.signal(signal.SIGUSR1, hard_stop)
    parent = os.getppid()
    ParentDeath.arm()
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s worker {args.index}: %(message)s")
    install_redaction((*args.settings.github.tokens,
                       *((args.remote.token,) if args.remote is not None else ())))
    worker = None
    try:
        worker = Worker(args, reports, graceful, budget, parent)
        worker.run()
    except Interrupted:
        pass  # stopping (a signal, or Redis failed while stopping): users were given back
    except BulkbackupError as exc:
        with contextlib.suppress(OSError):  # the parent may be gone
            reports.send(Failed(args.index, str(exc), exc.exit_code))
        raise SystemExit(WorkerExit.FATAL) from None
    finally:
        if worker is not None:
            worker.watch.wait_for_exit()


class Worker:
    """One worker process's work. Built from plain parts (settings and ids in `args`, the
    parent's pipe, flag and budget; optionally its store and lister), so that a test can run
    one in its own process: `run()` drains `tracked` and returns."""

    def __init__(self, args: WorkerArgs, reports: Connection,
                 graceful: ctypes.c_bool, budget: Synchronized[int], parent_pid: int,
                 store: Store | None = None, lister: ListerFactory | None = None) -> None:
        """`store`: used, not closed (default: opened from the settings, closed at the
        end); `lister`: builds the lister from the archive's conditions (default: the one
        `github.api` names, through the quota broker shared in Redis)."""
        s = args.settings
        self.args = args
        self.reports = reports
        self.budget = UserBudget(budget)
        self.stop = threading.Event()  # set when the parent asks for a graceful stop
        self.queue = args.open_queue()
        self.sizer = BatchSizer(s.run.claim_target_s, s.run.claim_batch_max, args.procs)
        self.broker = self.queue.broker(s.github.tokens)
        self._store = store
        self._lister = lister or self._github_lister
        self.feed: ListingFeed | None = None  # claimed users not started (run)
        self.share = ListingShare(self.queue, args.procs, (s.github.api_url, s.github.clone_host),
                                  args.run_start, args.clock_offset_s, self._hand_back)
        self._listed_s = 0.0  # the last listing step's seconds per user it finished
        self.failures_in_a_row = 0  # store or Redis failures since the last user that worked
        self.watch = ParentWatch(self.queue, graceful, self.stop, parent_pid, args.run_pid,
                                 s.run.lock_ttl_s)

    def _github_lister(self, conditions: Conditions) -> Lister:
        lister = open_github_lister(self.args.settings.github, self.broker, self.stop,
                                    conditions, self.args.settings.run.gists)
        if isinstance(lister, GraphQLLister) and self.args.relay is not None:
            lister.relay = relay_client(self.args.settings, self.args.relay)
        return lister

    def run(self) -> None:
        s = self.args.settings
        self.watch.start()
        store = self._store or self.queue.open_store()
        self.queue.start()
        lister: Lister | None = None
        try:
            with work_dir(s, f"w{self.args.index}") as path:
                job = UserBackup(s, store, self.broker.any_token,
                                 GitWork(s.run, path, self.args.procs),
                                 committed=self.queue.committed, broker=self.broker)
                lister = self._lister(job.conditions)
                self.feed = ListingFeed(lister, s.github.graphql_batch,
                                        self.queue.shares_listings)
                self._loop(job, self.feed)
        finally:
            self._give_back_queue()
            self.queue.stop()
            if lister is not None:
                lister.close()
            if self._store is None:
                store.close()
            self.watch.finish()

    def _report(self, report: Report) -> None:
        try:
            self.reports.send(report)
        except OSError:  # BrokenPipeError: nobody reads any more
            self.watch.orphaned("the run's parent process is gone (its pipe is closed)")

    def _claim(self, remaining: int | None, size: int) -> tuple[list[Claimed], int]:
        """Due users, each with what it is due for (queue/claims.py: DueReason)."""
        want = self.budget.take(size)
        if want == 0:
            return [], 0
        with self.watch.claiming() as open_:
            if not open_:
                return [], 0
            batch = retrying("claim", lambda: self.queue.claim_due(want),
                              self.args.settings.run.redis_retry_s, self.stop,
                              self.queue.transient)
        self.budget.give_back(want - len(batch.claimed))
        return batch.claimed, batch.remaining

    def _loop(self, job: UserBackup, feed: ListingFeed) -> None:
        """The one loop, whatever the lister: sync the users whose listing is ready; else
        claim (as the feed says) and list; else end once nothing is left."""
        remaining: int | None = None
        # At the end of a run every idle worker waits here for the last users (the queue
        # says how long: Redis answers a poll cheaply, the lease API is rate limited).
        idle_wait = self.queue.idle_wait_s
        while not self.stop.is_set():
            if feed.ready:
                member, listing = feed.ready.popleft()
                self._one(job, member, listing)
                continue
            remaining = self._fill(job, feed, remaining)
            if feed.ready:  # invalid logins: failed without a request
                continue
            if feed.queued:
                self._list(feed, remaining)
                continue
            if self._drained():
                return
            # Others hold the last users; if one dies its lease expires and is ours.
            self.stop.wait(idle_wait)

    def _fill(self, job: UserBackup, feed: ListingFeed, remaining: int | None) -> int | None:
        """Claim as the feed wants (see ListingFeed.wanted). A user whose events only moved
        refs of repositories it has archived (EVENTS_REFS) is ready at once, its listing
        read from the archive (no API request); so is one handed over with its listing
        (run/listing_share.py); the others go to the lister."""
        run = self.args.settings.run
        while (want := feed.wanted(remaining, self.sizer.size(remaining), self.args.procs,
                                   run.claim_batch_max)) > 0:
            claimed, remaining = self._claim(remaining, want)
            if not claimed or not self.share.place(job, feed, claimed, remaining):
                break
            if feed.ready:
                # Synced before more are claimed: users made ready here take no room in the
                # lister's next request, so claiming on would hold ever more of them.
                break
        return remaining

    def _list(self, feed: ListingFeed, remaining: int | None) -> None:
        """One step of the lister; the users beyond this process's share handed over.
        Waiting for quota before it is this process waiting for the forge (its users' locks
        are kept alive meanwhile): the deadline, github.user_deadline_s, starts after it. A
        wait during the step past the deadline gives the users back, never recorded as their
        failure: those the rate limit stopped count an attempt (see TakenBack), so a forge
        rate limited forever cannot keep a run from ending; then this process waits for the
        quota holding no user."""
        feed.lister.wait_ready()
        started = time.monotonic()
        try:
            made = feed.step(started + self.args.settings.github.user_deadline_s)
            if made:  # each user's time (the batch size rule) includes its share of this
                self._listed_s = (time.monotonic() - started) / made
                if feed.shares:
                    self.share.hand_over(feed, remaining or 0)
        except RateLimited as exc:
            back = feed.take_back()
            for member in back.stopped:
                self._give_back(member, str(exc))
            for member in back.waiting:
                self._give_back(member)
            feed.lister.wait_ready()

    def _drained(self) -> bool:
        if self.budget.spent():
            return True
        return retrying("claim", self.queue.drained, self.args.settings.run.redis_retry_s,
                         self.stop, self.queue.transient)

    def _one(self, job: UserBackup, member: str, listing: OwnerListing) -> None:
        login = keys.login_of(member)
        started = time.monotonic()
        fence = self.queue.fence(member)  # every write of this user is fenced by its lock
        try:
            result = job.sync(login, listing, fence)
        except LockLost:
            self.queue.drop(member)
            self._report(Lost(self.args.index, login))
            return
        except Interrupted:
            self._give_back(member)
            return
        except ConfigError:  # a token GitHub refuses: no user's failure; the run stops
            self._give_back(member)
            raise
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
                job.record_error(login, result.error, fence)
            except BulkbackupError as again:
                log.warning("%s: could not record the error: %s", login, again)
        self.failures_in_a_row = 0
        self.sizer.observe(time.monotonic() - started + self._listed_s)
        rs = self.args.settings.run.redis_retry_s
        finished = retrying("complete", lambda: self._complete(member, listing, result), rs,
                             threading.Event(), self.queue.transient)
        self.queue.drop(member)
        self.queue.note_done(result.archived, result.bytes)
        if finished is Completion.LOST:
            self._report(Lost(self.args.index, login))
            return
        self.queue.record_history(login, result.archived, result.bytes, result.failed,
                                  result.error)
        self._report(Synced(self.args.index, login, result.reported, result.archived,
                            result.bytes, bool(result.error)))

    def _complete(self, member: str, listing: OwnerListing, result: UserResult) -> Completion:
        """End a sync: listed in full (SYNCED: score := now), or without a listing (its
        listing from the archive: SYNCED_REFS, the score of its last full listing kept)."""
        if listing.outcome is ListingOutcome.CHANGED:
            # A sync without a listing wrote no user object: the cached counts stay its.
            return self.queue.finish_refs(member, "", result.archived, result.bytes)
        counts = result.counts()
        return self.queue.finish(
            member, True, counts.encode() if counts is not None else "", result.archived,
            result.bytes, "" if counts is not None else result.error)

    def _give_back(self, member: str, failure: str = "") -> None:
        login = keys.login_of(member)
        max_attempts = self.args.settings.run.max_attempts
        # A Redis error: the lock expires and the user is claimable again, as if given back.
        outcome = Completion.DONE
        try:
            outcome = (self.queue.fail(member, max_attempts) if failure
                       else self.queue.finish(member, False))
        except self.queue.errors as exc:
            log.warning("could not give %s back (its lock will expire): %s", member, exc)
        self.queue.drop(member)
        if outcome is Completion.LOST:
            # Someone else holds it now (or nobody): it is theirs to finish, not given back.
            log.warning("%s: lock lost before it could be given back%s", login,
                        f" ({failure})" if failure else "")
            self._report(Lost(self.args.index, login))
        elif outcome is Completion.DEFERRED:
            log.warning("%s: %s (failed %d times in a row: left for the next run)", login,
                        failure, max_attempts)
            self._report(Deferred(self.args.index, login))
        else:
            if failure:
                log.warning("%s: %s (given back for another attempt)", login, failure)
            self._report(GivenBack(self.args.index, login))

    def _hand_back(self, member: str) -> None:
        """Given back as it was for another worker (its listing handed over): no report;
        its place in the --max-users budget goes back too."""
        self.budget.give_back(1)
        try:
            if self.queue.finish(member, False) is Completion.LOST:
                self._report(Lost(self.args.index, keys.login_of(member)))
        except self.queue.errors as exc:
            log.warning("could not hand %s over (its lock will expire): %s", member, exc)
        self.queue.drop(member)

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
        """Every user claimed and not started (listed or being listed), as it was."""
        if self.feed is not None:
            for member in self.feed.take_back().all:
                self._give_back(member)
