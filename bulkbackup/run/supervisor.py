"""`bulkbackup run`: a pool of worker processes draining `tracked`, then the stats pass.

With `--server URL` (a remote pool) the same pool leases its users from `serve`'s lease API
and sends its archives there: no Redis, no store here; `tracked`, its rebuild, the stats pass,
the last run's figures and the workers' heartbeats are the server's side.

The parent only supervises: it starts workers (forkserver/spawn: threads are running, so no
plain fork), replaces crashed ones, shows progress from their reports, watches that Redis
still has `tracked`, and handles signals: the first SIGINT/SIGTERM stops claiming and lets
in-flight users finish for `run.grace_s`, a second one (or the end of the grace period) stops
at once. Abandoned users are claimed again once their locks expire, by this run or the next.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import random
import signal
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

import redis

from bulkbackup import workdir
from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError
from bulkbackup.progress import Progress
from bulkbackup.queue import keys
from bulkbackup.queue.connection import connect, server_time
from bulkbackup.run.relay_host import HostRelay, open_host_relay
from bulkbackup.run.remote_queue import RemoteTarget
from bulkbackup.run.reports import Deferred, Failed, GivenBack, Lost, Synced, WorkerExit
from bulkbackup.run.worker import WorkerArgs, worker_main
from bulkbackup.store import clean_stale_temp

log = logging.getLogger(__name__)

MAX_RESTARTS_PER_MIN = 10
# How often the parent checks that Redis still has `tracked` (EXISTS + ZCARD: cheap).
TRACKED_CHECK_S = 1.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class RunTotals:
    users: int = 0
    repos: int = 0
    archived: int = 0
    bytes: int = 0
    errors: int = 0
    lost: int = 0
    given_back: int = 0
    deferred: int = 0
    elapsed_s: float = 0.0
    failure: str = ""
    failure_code: int = 1  # the failing worker's error's exit code (2: configuration)

    def summary(self) -> str:
        rate = self.users / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (f"run: {self.users} users synced, {self.repos} repositories listed, "
                f"{self.archived} archived, {self.bytes / 1e6:.1f} MB uploaded, "
                f"{self.errors} users with errors, {self.lost} locks lost, "
                f"{self.given_back} given back, {self.deferred} left for the next run, "
                f"{self.elapsed_s:.1f}s, {rate:.1f} users/s")


@dataclass(frozen=True)
class RunReport:
    """What a run did, for its caller to render."""

    totals: RunTotals
    stopped_by_signal: bool
    # Why the run stopped early ("" if it did not): a worker could not work at all.
    fatal: str = ""
    # Users `tracked` lost mid-run (Redis flushed or restarted) that the store could not
    # bring back: they need a new ingest.
    users_lost: int = 0

    @property
    def deferred(self) -> int:
        return self.totals.deferred


def _context() -> mp.context.ForkServerContext | mp.context.SpawnContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Imported once in the fork server, so each worker (and each replacement) starts
        # without importing boto3, GitPython and redis again (bulkbackup.run.worker), and so the
        # fork server dies with this process (see _forkserver).
        ctx.set_forkserver_preload(["bulkbackup.run._forkserver"])
        return ctx
    return mp.get_context("spawn")


def _start_fork_server(ctx: mp.context.BaseContext) -> None:
    """Start the fork server deaf to SIGINT/SIGTERM, as the workers it forks.

    It lives in the run's process group: SIGTERM to the group (systemd's KillMode=
    control-group, `kill -- -PGID`, `timeout`) would kill it, and the parent would read every
    worker as dead and exit while they still run. An ignored disposition survives its exec;
    the signals are blocked meanwhile, so one sent to this process now is delivered, not
    lost, once its handler is back. Workers unblock them (see worker_main).
    """
    if not isinstance(ctx, mp.context.ForkServerContext):
        return
    # Started first: it unblocks the signals when it has started, which would open the window.
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP_SIGNALS}
    try:
        forkserver.ensure_running()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@dataclass
class _Signals:
    count: int = 0
    graceful_at: float = 0.0  # monotonic time the graceful stop began
    old: dict[int, typing.Any] = field(default_factory=dict)


class Supervisor:
    """One run of the pool: start it, count its reports, stop it, say what it did."""

    def __init__(self, settings: Settings, procs: int | None = None,
                 max_users: int | None = None,
                 notify: Callable[[str], None] | None = None,
                 remote: RemoteTarget | None = None) -> None:
        self.settings = settings
        self.remote = remote
        # Tells the operator, at once, what a signal changed (the caller renders it).
        self.notify = notify or log.warning
        self.procs = procs or settings.run.procs
        self.max_users = max_users
        self.r = connect(settings.redis) if remote is None else None
        self.ctx = _context()
        # A lock-free shared flag (see run/parent_watch.py): set once, only by this process.
        self.graceful = self.ctx.RawValue(ctypes.c_bool, False)
        self.budget = self.ctx.Value("q", -1 if max_users is None else max_users)
        self.rand = random.SystemRandom().randrange(1, 2**31)
        self.totals = RunTotals()
        self.signals = _Signals()
        # One pipe per worker, not a shared Queue: a worker killed while holding a shared
        # queue's write lock would block every other worker's reports, and their exit.
        self.readers: dict[int, Connection] = {}
        self.workers: dict[int, BaseProcess] = {}
        self.restarts: list[float] = []
        self.fatal = ""
        self.users_lost = 0
        self.tracked_size = 0  # the most `tracked` held in this run, as last seen
        self.next_check = 0.0
        self.run_start = 0.0
        self.clock_offset_s = 0.0
        self.relay: HostRelay | None = None  # small GraphQL queries merged (issue 22)

    def run(self) -> RunReport:
        due = self._prepare()
        bar_total = due if self.max_users is None else min(due, self.max_users)
        self.bar = Progress(total=max(bar_total, 1), unit="user", desc="run")
        self.signals.old = {s: signal.signal(s, self._on_signal) for s in _STOP_SIGNALS}
        started = time.monotonic()
        self.relay = open_host_relay(self.settings, self.r, self.procs)
        try:
            _start_fork_server(self.ctx)
            self.workers = {i: self._spawn(i) for i in range(self.procs)}
            self._supervise()
        finally:
            if self.relay is not None:
                self.relay.close()
            self.bar.close()
            for s, handler in self.signals.old.items():
                signal.signal(s, handler)
            _stop_now(self.workers.values())
        self.totals.elapsed_s = time.monotonic() - started
        self._record_last_run()
        return RunReport(self.totals, stopped_by_signal=self.signals.count > 0,
                         fatal=self.fatal, users_lost=self.users_lost)

    def _prepare(self) -> int:
        """Make sure `tracked` is there; fix the run's start; returns the users due."""
        if self.r is None:
            return self._prepare_remote()
        if not self.r.exists(keys.TRACKED):
            from bulkbackup.passes.stats import rebuild

            added = rebuild(self.settings, self.r)
            log.warning("`tracked` was missing: rebuilt %d users from the store", added)
        self.r.set(keys.INTACT, int(time.time()))
        self.tracked_size = int(self.r.zcard(keys.TRACKED))
        # What killed processes left: work folders and the local store's temp files.
        workdir.clean_stale(self.settings)
        removed = clean_stale_temp(self.settings.store)
        if removed:
            log.warning("removed %d temp files of the store left by killed writers", removed)
        server_now = server_time(self.r)
        self.clock_offset_s = server_now - time.time()
        # Whole seconds, like the scores completion writes: a user finished in this very
        # second scores run_start, not below it, and is not claimed twice.
        self.run_start = float(math.floor(server_now))
        return int(self.r.zcount(keys.TRACKED, "-inf", f"({self.run_start}"))

    def _prepare_remote(self) -> int:
        """The run's start in the server's clock, and the users due, from `serve`."""
        assert self.remote is not None
        workdir.clean_stale(self.settings)
        client = self.remote.client()
        try:
            status = client.status()
        finally:
            client.close()
        self.clock_offset_s = status.server_time - time.time()
        self.run_start = float(math.floor(status.server_time))
        return max(status.remaining, 0)

    def _spawn(self, i: int) -> BaseProcess:
        host = self.settings.run.worker_host
        relay_end = self.relay.worker_end(i, self.ctx) if self.relay else None
        args = WorkerArgs(settings=self.settings, index=i, worker_id=f"{self.rand}.{i}.{host}",
                          run_start=self.run_start, clock_offset_s=self.clock_offset_s,
                          procs=self.procs, remote=self.remote, run_pid=os.getpid(),
                          relay=relay_end)
        reader, writer = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=worker_main,
                             args=(args, writer, self.graceful, self.budget),
                             name=f"bulkbackup-worker-{i}", daemon=False)
        p.start()
        writer.close()  # the worker holds the only writing end
        if relay_end is not None:
            relay_end.close()
        self.readers[i] = reader
        return typing.cast(BaseProcess, p)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.signals.count += 1
        if self.signals.count == 1:
            self._stop_claiming()
            self.notify(f"stopping: in-flight users have {self.settings.run.grace_s:g}s "
                        "to finish (signal again to stop now)")

    def _stop_claiming(self) -> None:
        if not self.graceful.value:
            self.signals.graceful_at = time.monotonic()
            self.graceful.value = True

    def _supervise(self) -> None:
        while self.workers:
            _drain(self.readers.values(), self.totals, self.bar, timeout=0.1)
            self._check_tracked()
            if self.graceful.value and (
                    self.signals.count > 1
                    or time.monotonic() - self.signals.graceful_at > self.settings.run.grace_s):
                _stop_now(self.workers.values())
            for i, p in list(self.workers.items()):
                if not p.is_alive():
                    self._reap(i, p)
        _drain(self.readers.values(), self.totals, self.bar, timeout=0)
        self.next_check = 0.0
        self._check_tracked()  # a loss after the last worker ended is still reported

    def _reap(self, i: int, p: BaseProcess) -> None:
        """Count a finished worker's last reports; replace it if it crashed."""
        p.join()
        del self.workers[i]
        _drain([self.readers[i]], self.totals, self.bar, timeout=0)
        self.readers.pop(i).close()
        if p.exitcode in (WorkerExit.OK, None) or self.graceful.value:
            return
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if p.exitcode == WorkerExit.FATAL or len(self.restarts) > MAX_RESTARTS_PER_MIN:
            self.fatal = self.fatal or f"worker {i} failed (exit {p.exitcode})"
            self._stop_claiming()  # the others finish their users within the grace period
            return
        log.warning("worker %d died (exit %s); starting a new one", i, p.exitcode)
        self.workers[i] = self._spawn(i)

    def _check_tracked(self) -> None:
        """Redis flushed, or restarted without persistence, loses `tracked` (and the marker
        set at start): rebuild it from the store as at start, and count the users it had
        that the store cannot bring back (never synced: they need a new ingest)."""
        now = time.monotonic()
        if now < self.next_check or self.r is None:  # a remote pool: the server's side
            return
        self.next_check = now + TRACKED_CHECK_S
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.exists(keys.INTACT)
            pipe.zcard(keys.TRACKED)
            intact, size = pipe.execute()
            if intact and size >= self.tracked_size:
                self.tracked_size = int(size)
                return
            self._rebuild_tracked(int(size))
        except (redis.RedisError, BulkbackupError) as exc:
            # Workers see Redis errors themselves; the next check tries again.
            log.warning("could not check or rebuild `tracked` (will retry): %s", exc)

    def _rebuild_tracked(self, size: int) -> None:
        from bulkbackup.passes.stats import rebuild

        assert self.r is not None
        before = self.tracked_size
        log.warning("`tracked` has %d users, %d before (Redis flushed or restarted without "
                    "persistence?): rebuilding it from the store", size, before)
        added = rebuild(self.settings, self.r, progress=False)
        self.r.set(keys.INTACT, int(time.time()))
        after = int(self.r.zcard(keys.TRACKED))
        lost = max(before - after, 0)
        self.users_lost += lost
        self.tracked_size = after
        log.warning("rebuilt `tracked` from the store: %d users added, %d tracked; %d users it "
                    "had are not in the store and need a new ingest", added, after, lost)

    def _record_last_run(self) -> None:
        t = self.totals
        if self.r is None:
            return  # a remote pool: the server counts its completions
        self.r.hset(keys.LAST_RUN, mapping={
            "started_at": int(self.run_start), "ended_at": int(time.time()),
            "users": t.users, "repos": t.repos,
            "archived": t.archived, "bytes": t.bytes, "errors": t.errors,
            "elapsed_s": round(t.elapsed_s, 3),
            "users_per_s": round(t.users / t.elapsed_s, 3) if t.elapsed_s else 0,
            "deferred": t.deferred, "procs": self.procs, "host": self.settings.run.worker_host,
        })


def run(settings: Settings, procs: int | None = None, max_users: int | None = None,
        notify: Callable[[str], None] | None = None,
        remote: RemoteTarget | None = None) -> RunReport:
    """Drain `tracked` with a pool of worker processes; prints nothing (``notify`` gets
    what the operator should see at once: default, the log). ``remote``: lease from `serve`
    (`run --server`) in place of Redis and the store."""
    return Supervisor(settings, procs, max_users, notify, remote).run()



def _drain(readers: Iterable[Connection], totals: RunTotals, bar: Progress,
           timeout: float) -> None:
    """Count every report waiting on ``readers``, waiting up to ``timeout`` for the first."""
    conns = list(readers)
    ready = wait(conns, timeout)
    for conn in (c for c in conns if c in ready):
        while True:
            try:
                if not conn.poll():
                    break
                report = conn.recv()
            except (EOFError, OSError):  # the worker has exited; the loop reaps it
                break
            _count(report, totals, bar)
        bar.set_postfix(f"repos={totals.repos} MB={totals.bytes / 1e6:.0f} "
                        f"errors={totals.errors}")


def _count(report: object, totals: RunTotals, bar: Progress) -> None:
    match report:
        case Synced():
            totals.users += 1
            totals.repos += report.repos
            totals.archived += report.archived
            totals.bytes += report.bytes
            totals.errors += report.error
            bar.update(1)
        case Lost():
            totals.lost += 1
        case GivenBack():
            totals.given_back += 1
        case Deferred():
            totals.deferred += 1
        case Failed():
            totals.failure, totals.failure_code = report.message, report.exit_code
            log.error("worker %s: %s", report.index, report.message)
        case _:
            log.error("unexpected report from a worker: %r", report)


def _stop_now(workers: Iterable[BaseProcess]) -> None:
    """Stop workers at once: SIGUSR1 kills their git commands; SIGKILL if they linger."""
    procs = [p for p in workers if p.is_alive()]
    for p in procs:
        if p.pid:
            os.kill(p.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()

