"""Remote workers as `serve` sees them: per-token request budgets (429), last use, and their
row on `/workers` (a heartbeat written on their behalf, as a local worker's LockKeeper writes
its own). All in memory of this `serve` process, touched from the event loop only."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import orjson
import redis

from bulkbackup.queue import keys, worker_tokens

# Last use is written at most this often per token; the heartbeat at most this often.
TOUCH_EVERY_S = 60.0
BEAT_EVERY_S = 5.0


def row_id(name: str) -> str:
    """The id of a token's row among the workers (one row per token, all its processes)."""
    return f"remote.{name}"


@dataclass
class Bucket:
    """A token bucket: ``rate_per_s`` requests a second, at most ``burst`` at once."""

    rate_per_s: float
    burst: int
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """0 when a request may go now; else the seconds until one may."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = float(self.burst)
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


@dataclass
class _Token:
    bucket: Bucket
    since: float = field(default_factory=time.time)
    touched_at: float = -1e9
    beat_at: float = -1e9
    done: deque[tuple[float, int, int]] = field(default_factory=deque)


class RemoteWorkers:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._tokens: dict[str, _Token] = {}

    def _get(self, name: str) -> _Token:
        entry = self._tokens.get(name)
        if entry is None:
            entry = self._tokens[name] = _Token(Bucket(self.rate_per_s, self.burst))
        return entry

    def take(self, name: str) -> float:
        return self._get(name).bucket.take()

    def note_done(self, name: str, repos: int, nbytes: int) -> None:
        self._get(name).done.append((time.time(), repos, nbytes))

    def due_writes(self, name: str, changed: bool = False) -> tuple[bool, bool]:
        """(record the last use now, write the heartbeat now: due, or ``changed``: the
        token's leases changed), and mark them done."""
        entry, now = self._get(name), time.monotonic()
        touch = now - entry.touched_at >= TOUCH_EVERY_S
        beat = changed or now - entry.beat_at >= BEAT_EVERY_S
        if touch:
            entry.touched_at = now
        if beat:
            entry.beat_at = now
        return touch, beat

    def forget(self, name: str) -> None:
        self._tokens.pop(name, None)

    def figures(self, name: str) -> dict[str, object]:
        """The row's figures but `users` (read from Redis by write_beat); in the event loop,
        where the counts are kept."""
        entry, now = self._get(name), time.time()
        while entry.done and entry.done[0][0] < now - 60:
            entry.done.popleft()
        done = list(entry.done)
        return {"id": row_id(name), "host": "remote", "token": name, "since": int(entry.since),
                "seen": int(now), "users_per_min": len(done),
                "repos_per_min": sum(d[1] for d in done),
                "bytes_per_min": sum(d[2] for d in done)}


def write_beat(r: redis.Redis, name: str, touch: bool, figures: dict[str, object] | None
               ) -> None:
    """Blocking: the token's last use and its row on /workers (``figures``: none, not due).
    A failure loses one beat."""
    now = time.time()
    try:
        if touch:
            worker_tokens.touch(r, name, now)
        if figures is not None:
            figures["users"] = int(r.scard(keys.worker_leases(name)))
            pipe = r.pipeline(transaction=False)
            pipe.set(keys.worker(row_id(name)), orjson.dumps(figures), ex=keys.WORKER_TTL_S)
            pipe.zadd(keys.WORKERS, {row_id(name): now})
            pipe.execute()
    except redis.RedisError:
        pass
