"""A worker process's watch on its parent (`bulkbackup run`): the parent's graceful-stop flag
becomes the worker's stop event, and when the parent dies (SIGKILL, a crash) nobody will
count, replace or stop the worker any more, so it gives back every user it holds, kills git
and exits. The worker's user loop is run/worker.py; this is its process's other concern."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from typing import NoReturn

from bulkbackup.git import gitops
from bulkbackup.queue.tracked import Completion
from bulkbackup.run.parentdeath import ParentDeath, process_alive
from bulkbackup.run.reports import WorkerExit
from bulkbackup.run.work_queue import WorkQueue

log = logging.getLogger(__name__)

# How often the watch thread looks at the parent's flag and at the parent itself.
WATCH_S = 0.1


class ParentWatch:
    def __init__(self, queue: WorkQueue, graceful: ctypes.c_bool, stop: threading.Event,
                 parent_pid: int, run_pid: int, lock_ttl_s: float) -> None:
        self.queue = queue
        self.graceful = graceful  # the parent's flag: stop after the current user
        self.stop = stop  # the worker's stop event
        self.parent_pid = parent_pid
        self.run_pid = run_pid
        self.lock_ttl_s = lock_ttl_s
        self._finished = threading.Event()  # the worker's run() has returned: the watch ends
        # Held while a claim is made and its users are handed to the keeper, so that the give
        # back on the parent's death sees every user this process holds.
        self._claim_mu = threading.Lock()
        self._closed = False  # the parent is gone: no more claims
        self._orphan_mu = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._watch, name="watch", daemon=True).start()

    def finish(self) -> None:
        self._finished.set()

    @contextlib.contextmanager
    def claiming(self) -> Iterator[bool]:
        """Held around a claim; yields whether claims are still open (the parent lives)."""
        with self._claim_mu:
            yield not self._closed

    def _watch(self) -> None:
        # Polled, not a multiprocessing.Event: a process that dies while waiting on one
        # leaves its Condition expecting a wake-up, and the parent's set() then hangs forever.
        while not self._finished.wait(WATCH_S):
            if self.graceful.value:
                self.stop.set()
            if (ParentDeath.signalled or os.getppid() != self.parent_pid
                    or not process_alive(self.run_pid)):
                self.orphaned("the run's parent process is gone")

    def orphaned(self, why: str) -> NoReturn:
        """The parent died: give back every user this process holds (queued and in flight),
        kill git, exit. Either thread may get here first; the other waits here until the
        process exits."""
        with self._orphan_mu:
            self.stop.set()
            # A claim in progress lands first (bounded: it would expire anyway by then).
            if self._claim_mu.acquire(timeout=self.lock_ttl_s):
                self._closed = True
            held = self.queue.held()
            for member in held:
                self.queue.drop(member)  # the main thread's next lock check fails: no write
            gitops.kill_all()
            back = 0
            for member in held:
                try:
                    back += self.queue.finish(member, False) is Completion.DONE
                except self.queue.errors as exc:
                    log.warning("could not give %s back (its lock will expire): %s", member, exc)
            log.warning("%s: gave %d of %d users back; exiting", why, back, len(held))
            logging.shutdown()
            os._exit(WorkerExit.ORPHANED)

    def wait_for_exit(self) -> None:
        """Called last on the main thread: if the watch thread is giving users back after the
        parent's death, the process must not end before it has (it ends the process)."""
        with self._orphan_mu:
            pass
