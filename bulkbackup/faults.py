"""A fault for tests of crash safety: `BULKBACKUP_TEST_KILL_AFTER_WRITES=N` makes the process
SIGKILL itself right after its N-th store write through a FencedStore has completed, so a
test can stop a real `bulkbackup sync` between any two writes (no mock, no patch: the same
code path as production, cut where a power loss or OOM kill could cut it)."""

from __future__ import annotations

import os
import signal
import threading

ENV = "BULKBACKUP_TEST_KILL_AFTER_WRITES"

_mu = threading.Lock()
_writes = 0


def after_write() -> None:
    global _writes
    limit = os.environ.get(ENV, "")
    if not limit.isdigit():
        return
    with _mu:
        _writes += 1
        if _writes >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)
