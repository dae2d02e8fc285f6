"""How many users a `run` worker claims at once, and the `--max-users` budget the workers share."""

from __future__ import annotations

import math
from multiprocessing.sharedctypes import Synchronized


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


class UserBudget:
    """`run --max-users`: how many users the workers may still claim, shared between processes
    (-1: no limit)."""

    def __init__(self, shared: Synchronized[int]) -> None:
        self._shared = shared

    def unlimited(self) -> bool:
        # Read without the lock (-1 never changes): without --max-users no worker ever takes
        # it, so one killed while holding it cannot block the others.
        return bool(self._shared.get_obj().value < 0)

    def take(self, n: int) -> int:
        """Up to ``n`` users from the budget; how many were granted."""
        if self.unlimited():
            return n
        with self._shared.get_lock():
            n = min(n, self._shared.value)
            self._shared.value -= n
            return n

    def give_back(self, n: int) -> None:
        if self.unlimited() or n == 0:
            return
        with self._shared.get_lock():
            self._shared.value += n

    def spent(self) -> bool:
        if self.unlimited():
            return False
        with self._shared.get_lock():
            return bool(self._shared.value == 0)
