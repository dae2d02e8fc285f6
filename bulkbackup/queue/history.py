"""A user's last syncs (the seed's /user/<user>/log): what each sync of the user did.

Kept in Redis, not in the store: the store's layout (DESIGN.md) has no place for it, and a
sync's figures are a cache of what the store's objects say. One list per user
(keys.history: its lowercased login), newest first, at most keys.HISTORY_MAX entries, each a
line of text `<time_s> <repos_changed> <bytes> <errors>[ <error>]` (~25 bytes without an
error, the error at most ERROR_MAX_CHARS more). The worker records one entry per completed
sync (`record`); serve reads them (`read`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from bulkbackup.queue import keys

ERROR_MAX_CHARS = 120
TIME_MAX_S = 253402300799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class SyncEntry:
    """One sync of a user: when it completed (unix s), the repositories it archived (changed
    since the last sync), the bytes it uploaded, the repositories that failed, and the
    user's error (one line, shortened; "" when none)."""

    time_s: int
    repos_changed: int
    nbytes: int
    errors: int
    error: str = ""

    def encode(self) -> str:
        fields = f"{self.time_s} {self.repos_changed} {self.nbytes} {self.errors}"
        error = " ".join(self.error.split())[:ERROR_MAX_CHARS]
        return f"{fields} {error}" if error else fields

    @classmethod
    def decode(cls, text: object) -> SyncEntry | None:
        """None for anything that is not an entry (written by hand, or by a later version)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            return None
        parts = text.split(" ", 4)
        numbers = parts[:4]
        if len(numbers) < 4 or not all(x.isascii() and x.isdigit() and len(x) <= 18
                                       for x in numbers):
            return None
        t, repos, nbytes, errors = map(int, numbers)
        return cls(t, repos, nbytes, errors, parts[4] if len(parts) > 4 else "")

    def to_json(self) -> dict[str, object]:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time_s)) \
            if self.time_s <= TIME_MAX_S else None
        return {"time": when, "repos_changed": self.repos_changed,
                "bytes": self.nbytes, "errors": self.errors, "error": self.error or None}


def entry(time_s: float, repos_changed: int, nbytes: int, errors: int, error: str = ""
          ) -> SyncEntry:
    """An entry from a sync's figures (negative or non-finite ones count as 0)."""
    def whole(x: float) -> int:
        return int(x) if math.isfinite(x) and x > 0 else 0
    return SyncEntry(whole(time_s), whole(repos_changed), whole(nbytes), whole(errors), error)


def record(r: redis.Redis, login: str, sync: SyncEntry) -> None:
    """Add ``sync`` to ``login``'s history: one pipelined round trip (LPUSH, LTRIM to the
    last keys.HISTORY_MAX, EXPIRE keys.HISTORY_TTL_S)."""
    key = keys.history(login)
    pipe = r.pipeline(transaction=False)
    pipe.lpush(key, sync.encode())
    pipe.ltrim(key, 0, keys.HISTORY_MAX - 1)
    pipe.expire(key, keys.HISTORY_TTL_S)
    pipe.execute()


def read(r: redis.Redis, login: str, limit: int = keys.HISTORY_MAX) -> list[SyncEntry]:
    """``login``'s last syncs, newest first (logins ignore case), at most ``limit``."""
    raw = r.lrange(keys.history(login), 0, max(1, min(limit, keys.HISTORY_MAX)) - 1)
    found = [SyncEntry.decode(x) for x in raw]
    return [e for e in found if e is not None]
