"""The `tracked` sorted set: connections, claims, completion, reset (DESIGN.md "Redis")."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import redis

from bulkbackup import keys
from bulkbackup.config import RedisSettings
from bulkbackup.errors import ConfigError

_T = TypeVar("_T")


def connect(settings: RedisSettings, decode: bool = True) -> redis.Redis:
    """A client for ``settings.url``; each process builds its own."""
    try:
        return redis.Redis.from_url(
            settings.url,
            decode_responses=decode,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=min(settings.socket_timeout_s, 10.0),
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid redis.url: {exc}") from None


def _script(name: str) -> str:
    return resources.files("bulkbackup").joinpath("lua", name).read_text(encoding="utf-8")


class Scripts:
    """The project's Lua scripts, registered on one client (EVALSHA, loaded on demand)."""

    def __init__(self, r: redis.Redis) -> None:
        self.claim = r.register_script(_script("claim.lua"))
        self.refresh = r.register_script(_script("refresh.lua"))
        self.complete = r.register_script(_script("complete.lua"))


def server_time(r: redis.Redis) -> float:
    sec, usec = r.time()
    return float(sec) + usec / 1e6


@dataclass
class Claimer:
    """Claims batches of due users for one worker id."""

    r: redis.Redis
    scripts: Scripts
    worker_id: str
    lock_ttl_s: int
    run_start: float
    # Server time minus local time: leases are in server time, shared by all machines.
    clock_offset_s: float = 0.0
    # Members this run gave up on (see complete.lua), as of the last claim.
    deferred_seen: int = 0

    def claim(self, n: int) -> tuple[list[str], int]:
        """(up to ``n`` due users, each now locked for this worker; users still due).

        Two round trips: a pipelined read of the candidates (lowest scores below the run's
        start, and expired leases of dead workers), then one script that claims them.
        """
        deferred = keys.deferred(self.run_start)
        while True:
            now = time.time() + self.clock_offset_s
            skip = self.deferred_seen
            pipe = self.r.pipeline(transaction=False)
            pipe.zrange(keys.LEASES, "-inf", now, byscore=True, offset=0, num=n)
            # Users this run gave up on keep their scores at the front: read past them
            # (they are few).
            pipe.zrange(keys.TRACKED, "-inf", f"({self.run_start}", byscore=True, offset=0,
                        num=n + skip)
            pipe.zcount(keys.TRACKED, "-inf", f"({self.run_start}")
            pipe.scard(deferred)
            expired, due, count, seen = pipe.execute()
            self.deferred_seen = int(seen)
            remaining = max(int(count) - self.deferred_seen, 0)
            candidates = list(dict.fromkeys([*expired, *due]))
            claimed: list[str] = []
            if candidates:
                result = self.scripts.claim(
                    keys=[keys.TRACKED, keys.LEASES, keys.CLAIMS, deferred,
                          *map(keys.lock, candidates)],
                    args=[self.run_start, self.worker_id, self.lock_ttl_s, n, *candidates],
                )
                claimed = [str(m) for m in result]
            if claimed or self.deferred_seen <= skip:
                return claimed, max(remaining - len(claimed), 0)
            # More were given up on than this read stepped over: read again, further.

    def finish(self, member: str, synced: bool, counts: str = "", repos: int = 0,
               nbytes: int = 0) -> bool:
        """Synced: score := now. Not synced: the score it had is restored. False: lock lost.

        ``counts`` (see stats.UserCounts) is cached for the stats pass in the same call;
        ``repos`` and ``nbytes`` (archived by this sync) go to the per-minute counters.
        """
        return self._complete(member, 1 if synced else 0, counts, 0, repos, nbytes) != 0

    def fail(self, member: str, max_attempts: int) -> int:
        """Give back after a failure: 1 retried in this run, 2 deferred to the next run
        (its ``max_attempts``-th failure in a row), 0 lock lost."""
        return self._complete(member, 2, "", max_attempts)

    def _complete(self, member: str, mode: int, counts: str, max_attempts: int = 0,
                  repos: int = 0, nbytes: int = 0) -> int:
        # The minute in Redis server time (the clock every host shares), for the rate key.
        minute = int((time.time() + self.clock_offset_s) // 60)
        return int(self.scripts.complete(
            keys=[keys.TRACKED, keys.LEASES, keys.CLAIMS, keys.lock(member), keys.SYNCD,
                  keys.FAILURES, keys.deferred(self.run_start), keys.rate(minute)],
            args=[member, self.worker_id, mode, keys.login_of(member), counts, max_attempts,
                  keys.DEFERRED_TTL_S, repos, nbytes, keys.RATE_TTL_S],
        ))

    def remaining(self) -> int:
        """Users still due in this run (not counting those claimed right now, nor those it
        gave up on)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcount(keys.TRACKED, "-inf", f"({self.run_start}")
        pipe.smembers(keys.deferred(self.run_start))
        count, deferred = pipe.execute()
        if deferred:
            # Only those still due: another host's run may have synced one since.
            scores = self.r.zmscore(keys.TRACKED, list(deferred))
            count -= sum(1 for s in scores if s is not None and s < self.run_start)
        return max(int(count), 0)

    def in_flight(self) -> int:
        """Claimed users (anyone's) that were due in this run: the run waits for them."""
        members: list[str] = list(self.r.zrange(keys.LEASES, 0, -1))  # type: ignore[arg-type]
        if not members:
            return 0
        prev = self.r.hmget(keys.CLAIMS, members)
        return sum(1 for p in prev if p is None or float(p) < self.run_start)


def reset(r: redis.Redis) -> int:
    """Every score becomes 0 in one server-side step (the seed's "reset sync")."""
    pipe = r.pipeline(transaction=True)
    pipe.zunionstore(keys.TRACKED, {keys.TRACKED: 0})
    # Parked members' saved scores would otherwise bring old scores back on give-back.
    pipe.hkeys(keys.CLAIMS)
    _, claimed = pipe.execute()
    if claimed:
        r.hset(keys.CLAIMS, mapping=dict.fromkeys(claimed, 0))
    return int(r.zcard(keys.TRACKED))


def add_scores_gt(r: redis.Redis, scores: Iterable[tuple[str, float]], batch: int = 1000) -> int:
    """ZADD GT in pipelined batches: a member keeps a higher score it already has.

    Returns how many members were new.
    """
    added = 0
    pipe = r.pipeline(transaction=False)
    for chunk in chunks(scores, batch):
        pipe.zadd(keys.TRACKED, dict(chunk), gt=True)
        if len(pipe) >= 16:
            added += sum(int(x) for x in pipe.execute())
    if len(pipe):
        added += sum(int(x) for x in pipe.execute())
    return added


def chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def counts(r: redis.Redis) -> dict[str, int]:
    """Users tracked, never synced (-inf), and claimed right now (parked at +inf)."""
    pipe = r.pipeline(transaction=False)
    pipe.zcard(keys.TRACKED)
    pipe.zcount(keys.TRACKED, "-inf", "-inf")
    pipe.zcard(keys.LEASES)
    tracked, never, claimed = pipe.execute()
    return {"tracked": tracked, "never_synced": never, "claimed": claimed}
