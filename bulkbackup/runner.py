"""`bulkbackup run`: a pool of worker processes draining `tracked`, then the stats pass.

The parent only supervises: it starts workers (forkserver/spawn: threads are running, so no
plain fork), replaces crashed ones, shows progress from their reports, and handles signals:
the first SIGINT/SIGTERM stops claiming and lets in-flight users finish for `run.grace_s`,
a second one (or the end of the grace period) stops at once. Abandoned users are claimed
again once their locks expire, by this run or the next.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import random
import signal
import sys
import time
import typing
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from bulkbackup import keys
from bulkbackup.config import Settings
from bulkbackup.connection import connect, server_time
from bulkbackup.errors import BulkbackupError
from bulkbackup.progress import Progress
from bulkbackup.worker import (
    DEFERRED,
    DONE,
    FAILED,
    GIVEN_BACK,
    LOST,
    WorkerArgs,
    worker_main,
)

log = logging.getLogger(__name__)

MAX_RESTARTS_PER_MIN = 10


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

    def summary(self) -> str:
        rate = self.users / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (f"run: {self.users} users synced, {self.repos} repositories listed, "
                f"{self.archived} archived, {self.bytes / 1e6:.1f} MB uploaded, "
                f"{self.errors} users with errors, {self.lost} locks lost, "
                f"{self.given_back} given back, {self.deferred} left for the next run, "
                f"{self.elapsed_s:.1f}s, {rate:.1f} users/s")


def _context() -> mp.context.ForkServerContext | mp.context.SpawnContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Imported once in the fork server, so each worker (and each replacement) starts
        # without importing boto3, GitPython and redis again.
        ctx.set_forkserver_preload(["bulkbackup.worker"])
        return ctx
    return mp.get_context("spawn")


def run(settings: Settings, procs: int | None = None, max_users: int | None = None,
        with_stats: bool = True) -> int:
    procs = procs or settings.run.procs
    r = connect(settings.redis)
    if not r.exists(keys.TRACKED):
        from bulkbackup.stats import rebuild

        added = rebuild(settings, r)
        log.warning("`tracked` was missing: rebuilt %d users from the store", added)
    server_now = server_time(r)
    offset = server_now - time.time()
    # Whole seconds, like the scores completion writes: a user finished in this very second
    # scores run_start, not below it, and is not claimed twice.
    run_start = float(math.floor(server_now))
    due = int(r.zcount(keys.TRACKED, "-inf", f"({run_start}"))
    rand = random.SystemRandom().randrange(1, 2**31)
    ctx = _context()
    # One pipe per worker, not a shared Queue: a worker killed while holding a shared
    # queue's write lock would block every other worker's reports, and their exit.
    readers: dict[int, Connection] = {}
    # A lock-free shared flag (see Worker._watch_graceful): set once, only by this process.
    graceful = ctx.RawValue(ctypes.c_bool, False)
    budget = ctx.Value("q", -1 if max_users is None else max_users)
    host = settings.run.worker_host

    def spawn(i: int) -> BaseProcess:
        args = WorkerArgs(settings=settings, index=i, worker_id=f"{rand}.{i}.{host}",
                          run_start=run_start, clock_offset_s=offset, procs=procs)
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=worker_main, args=(args, writer, graceful, budget),
                        name=f"bulkbackup-worker-{i}", daemon=False)
        p.start()
        writer.close()  # the worker holds the only writing end
        readers[i] = reader
        return typing.cast(BaseProcess, p)

    signals = {"count": 0, "at": 0.0}

    def stop_claiming() -> None:
        if not graceful.value:
            signals["at"] = time.monotonic()
            graceful.value = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            stop_claiming()
            print(f"bulkbackup: stopping: in-flight users have {settings.run.grace_s:g}s "
                  "to finish (signal again to stop now)", file=sys.stderr)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    totals = RunTotals()
    started = time.monotonic()
    bar = Progress(total=max(due if max_users is None else min(due, max_users), 1),
                   unit="user", desc="run")
    workers = {i: spawn(i) for i in range(procs)}
    restarts: list[float] = []
    fatal = ""
    try:
        while workers:
            _drain(readers.values(), totals, bar, timeout=0.1)
            if graceful.value:
                hard = signals["count"] > 1 or (
                    time.monotonic() - signals["at"] > settings.run.grace_s)
                if hard:
                    _stop_now(workers.values())
            for i, p in list(workers.items()):
                if p.is_alive():
                    continue
                p.join()
                del workers[i]
                _drain([readers[i]], totals, bar, timeout=0)  # its last reports
                readers.pop(i).close()
                if p.exitcode in (0, None) or graceful.value:
                    continue
                restarts = [t for t in restarts if time.monotonic() - t < 60] + [time.monotonic()]
                if p.exitcode == 3 or len(restarts) > MAX_RESTARTS_PER_MIN:
                    fatal = fatal or f"worker {i} failed (exit {p.exitcode})"
                    stop_claiming()  # the others finish their users within the grace period
                    continue
                log.warning("worker %d died (exit %s); starting a new one", i, p.exitcode)
                workers[i] = spawn(i)
        _drain(readers.values(), totals, bar, timeout=0)
    finally:
        bar.close()
        for s, h in old.items():
            signal.signal(s, h)
        _stop_now(workers.values())
    totals.elapsed_s = time.monotonic() - started
    r.hset(keys.LAST_RUN, mapping={
        "started_at": int(run_start), "ended_at": int(time.time()),
        "users": totals.users, "repos": totals.repos,
        "archived": totals.archived, "bytes": totals.bytes, "errors": totals.errors,
        "elapsed_s": round(totals.elapsed_s, 3),
        "users_per_s": round(totals.users / totals.elapsed_s, 3) if totals.elapsed_s else 0,
        "deferred": totals.deferred, "procs": procs, "host": host,
    })
    print(totals.summary(), file=sys.stderr)
    if fatal:
        raise BulkbackupError(f"{fatal}: {totals.failure}" if totals.failure else fatal)
    code = 0
    if with_stats and not graceful.value:
        from bulkbackup.commands import stats_command

        code = stats_command(settings, as_json=False, write=True)
    if totals.deferred:
        raise BulkbackupError(
            f"{totals.deferred} users failed {settings.run.max_attempts} times on store or "
            "Redis errors and are left for the next run (see the log)")
    return code


def _drain(readers: typing.Iterable[Connection], totals: RunTotals, bar: Progress,
           timeout: float) -> None:
    """Count every report waiting on ``readers``, waiting up to ``timeout`` for the first."""
    conns = list(readers)
    ready = wait(conns, timeout)
    for conn in (c for c in conns if c in ready):
        while True:
            try:
                if not conn.poll():
                    break
                msg = conn.recv()
            except (EOFError, OSError):  # the worker has exited; the loop reaps it
                break
            _count(typing.cast(tuple[object, ...], msg), totals, bar)
        bar.set_postfix(f"repos={totals.repos} MB={totals.bytes / 1e6:.0f} "
                        f"errors={totals.errors}")


def _count(msg: tuple[object, ...], totals: RunTotals, bar: Progress) -> None:
    kind = msg[0]
    if kind == DONE:
        _, _, _login, repos, archived, size, error = msg
        totals.users += 1
        totals.repos += int(repos)  # type: ignore[call-overload]
        totals.archived += int(archived)  # type: ignore[call-overload]
        totals.bytes += int(size)  # type: ignore[call-overload]
        totals.errors += bool(error)
        bar.update(1)
    elif kind == LOST:
        totals.lost += 1
    elif kind == GIVEN_BACK:
        totals.given_back += 1
    elif kind == DEFERRED:
        totals.deferred += 1
    elif kind == FAILED:
        totals.failure = str(msg[2])
        log.error("worker %s: %s", msg[1], msg[2])


def _stop_now(workers: object) -> None:
    """Stop workers at once: SIGUSR1 kills their git commands; SIGKILL if they linger."""
    procs = [p for p in workers if p.is_alive()]  # type: ignore[attr-defined]
    for p in procs:
        if p.pid:
            os.kill(p.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
