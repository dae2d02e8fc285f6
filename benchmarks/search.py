"""Prefix search of logins at scale: serve's search (web/users.py, the keys.SEARCH index).

    python -m benchmarks.search [--users 1000000] [--queries 2000]

Starts a private redis-server, tracks N realistic logins the way `ingest` does (track.lua,
which also fills the search index), marks the index whole (`rebuild` would), then times
`Users.search` (the very call `/api/users?q=` makes: the index range, the spellings, the
scores, the page's rows) for random prefixes of 1-4 characters, first pages and pages deep
in a prefix through its cursor. Prints the latency percentiles, the index's memory per
user (MEMORY USAGE of the sorted set over its size), and first what the index adds to
track.lua's Redis time per login (ingest's cost).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import redis

from benchmarks.ingest import realistic_login
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts
from bulkbackup.queue.tracked import TRACK_BATCH, add_never_synced
from bulkbackup.testing.services import start_redis
from bulkbackup.web.users import Users

BATCH = 10_000


def fill(r: redis.Redis, n: int) -> None:
    rng = random.Random(7)
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        add_never_synced(r, [realistic_login(rng, i) for i in range(start, min(start + BATCH, n))])
    r.set(keys.SEARCH_WHOLE, 1)
    print(f"tracked {r.zcard(keys.TRACKED):,} users in {time.perf_counter() - started:.1f}s")


def track_cost(r: redis.Redis, n: int) -> None:
    """Redis's own time in track.lua per login (INFO commandstats), without and with the
    search index (its third key is optional): what the index adds to `ingest` and `track`."""
    script = Scripts(r).track
    usec = []
    for with_index in (False, True):
        r.flushall()
        r.config_resetstat()
        rng = random.Random(7)
        names = [keys.TRACKED, keys.LOGINS, *([keys.SEARCH] if with_index else [])]
        for start in range(0, n, TRACK_BATCH):
            script(keys=names, args=[keys.MEMBER_PREFIX, "count", *(
                realistic_login(rng, i) for i in range(start, min(start + TRACK_BATCH, n)))])
        stats = r.info("commandstats")
        usec.append(sum(v["usec"] for k, v in stats.items() if "eval" in k) / n)
    print(f"track.lua, Redis time per login ({n:,} logins): {usec[0]:.2f} us without the "
          f"search index, {usec[1]:.2f} us with it ({usec[1] / usec[0]:.2f}x)")
    r.flushall()


def timed(users: Users, prefixes: list[str], deep: bool) -> list[float]:
    out = []
    for q in prefixes:
        after = ""
        if deep:  # a page further in: the cursor of the first
            _, nxt, _ = users.search(q, 50, None)
            after = nxt or ""
        started = time.perf_counter()
        users.search(q, 50, None, after)
        out.append((time.perf_counter() - started) * 1000)
    return out


def report(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p = [ms[int(len(ms) * f) - 1] for f in (0.5, 0.9, 0.99)]
    print(f"{name:<22} p50 {p[0]:6.2f} ms  p90 {p[1]:6.2f} ms  p99 {p[2]:6.2f} ms  "
          f"max {ms[-1]:6.2f} ms  mean {statistics.fmean(ms):6.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            r = redis.Redis.from_url(url, decode_responses=True)
            track_cost(r, min(args.users, 500_000))
            fill(r, args.users)
            per_user = int(r.memory_usage(keys.SEARCH, samples=0) or 0) / r.zcard(keys.SEARCH)
            tracked = int(r.memory_usage(keys.TRACKED, samples=0) or 0) / r.zcard(keys.TRACKED)
            print(f"search index: {per_user:.0f} bytes per user "
                  f"({per_user * 100e6 / 2**30:.1f} GiB at 100 M users); "
                  f"`tracked` itself: {tracked:.0f} bytes per user")
            users = Users(r)
            rng = random.Random(1)
            alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
            prefixes = ["".join(rng.choices(alphabet, k=rng.randint(1, 4)))
                        for _ in range(args.queries)]
            timed(users, prefixes[:100], False)  # warm up
            report("first page", timed(users, prefixes, False))
            report("second page (cursor)", timed(users, prefixes, True))
            users.stored.close()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
