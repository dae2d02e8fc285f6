"""Noticing the death of one's parent process (Linux: PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

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


def process_alive(pid: int) -> bool:
    """Is process ``pid`` running (0: not watched: True)? A zombie, dead and not reaped yet,
    is not (Linux: its state in /proc; elsewhere only whether it exists)."""
    if pid <= 0:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: only whether it exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]
