"""Giving freed memory back to the system after downloads end.

Hundreds of downloads at once (stalled clients, each with its store connection and buffers)
leave glibc's per-thread arenas holding freed memory that it does not return by itself: the
process stays at its peak. After downloads have ended, malloc_trim(0) returns it; it runs
at most every TRIM_EVERY_S, and only when a download ended since the last time.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)
TRIM_EVERY_S = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class Trimmer:
    """Counts ended downloads; trim() gives memory back when some ended since last time."""

    def __init__(self) -> None:
        self.ended = 0
        self._trimmed_at = 0
        self._trim = _malloc_trim()

    def download_ended(self) -> None:
        self.ended += 1  # a lost increment from another thread only delays a trim

    async def run(self) -> None:
        """Until cancelled: trim every TRIM_EVERY_S when downloads ended meanwhile."""
        if self._trim is None:
            return
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            ended = self.ended
            if ended != self._trimmed_at:
                self._trimmed_at = ended
                await run_in_threadpool(self._trim, 0)
