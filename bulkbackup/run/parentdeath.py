"""Noticing the death of one's parent process (Linux: PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

# Signal the kernel sends a worker when its parent dies (Linux, PR_SET_PDEATHSIG).
PARENT_DEATH_SIGNAL = signal.SIGUSR2


class ParentDeath:
    """Set from PARENT_DEATH_SIGNAL's handler; the watch thread acts on it."""

    signalled = False

    @classmethod
    def on_signal(cls, _sig: int, _frame: object) -> None:
        cls.signalled = True  # nothing else: a handler must not take locks

    @classmethod
    def arm(cls) -> None:
        signal.signal(PARENT_DEATH_SIGNAL, cls.on_signal)
        set_parent_death_signal(PARENT_DEATH_SIGNAL)


def set_parent_death_signal(sig: signal.Signals) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG; a
    no-op elsewhere: the watch thread's look at os.getppid() covers every platform)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
