"""SIGTERM behaves like Ctrl-C for commands that do their work in the foreground.

Python's default SIGTERM kills the process on the spot: no `finally` runs, so git (in its own
process group, which the terminal's signals do not reach) keeps running and the work folder
stays behind. Inside `signals_interrupt()`, SIGTERM raises `Terminated` (a KeyboardInterrupt,
which `except Exception` does not swallow) like SIGINT does, and the cleanup runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: stop, running every `finally` on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside: the first SIGTERM or SIGINT raises `Terminated` in the main thread; any
    later one is ignored, so a second Ctrl-C cannot cut the cleanup short (SIGKILL still
    can). A signal that was ignored on entry (e.g. `nohup`, `cmd &` in a script) stays
    ignored. On exit the previous handlers come back. Elsewhere than the main thread (where
    Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        for s in wanted:
            if signal.getsignal(s) is on_signal:
                signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    # None: a handler Python did not install (it cannot be restored): leave that one alone.
    previous = {s: h for s in wanted
                if (h := signal.getsignal(s)) is not None and h is not signal.SIG_IGN}
    try:
        for s in previous:
            signal.signal(s, on_signal)
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
