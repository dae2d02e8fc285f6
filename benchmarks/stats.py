"""The passes over the whole store: stats and rebuild, per user and per store request.

    python -m benchmarks.stats [--users 100000] [--s3-users 20000]

Generates a store of U users with 3 repositories each (a small bundle per repository, a zip
for two of them, every tenth repository an empty zero-byte bundle) directly through the store
API, for the local folder and for a real moto_server over HTTP, then times:

- `stats` with a cold cache (FLUSHALL before: the store is the truth, one HEAD per user),
- `stats` again with a warm cache (the target: < 0.02 store requests per unchanged user),
- `rebuild` after FLUSHALL,

printing users/s and store requests per user for each. The baseline for requests is the naive
pass: one listing of the user's keys plus one metadata read per user (>= 2 requests a user).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from bulkbackup import config
from bulkbackup.archive.metadata import ERROR, LAST_SYNC, REPORTED_REPOS, SYNCD_REPOS
from bulkbackup.passes import stats
from bulkbackup.queue import keys
from bulkbackup.store import open_store
from bulkbackup.testing.services import free_port, start_moto, start_redis


def generate(settings: config.Settings, users: int) -> None:
    def one(i: int) -> None:
        store = local_store()
        login = f"user{i:07d}"
        syncd = 0
        for j in range(3):
            empty = (i * 3 + j) % 10 == 0
            meta = {LAST_SYNC: "2026-11-28T00:00:00Z", "PushedAt": "2026-01-01T00:00:00Z",
                    "UpdatedAt": "2026-01-01T00:00:00Z"}
            if empty:
                meta[ERROR] = "empty repository"
            store.put_bytes(f"{login}/r{j}.bundle", b"" if empty else b"B" * 100, meta)
            if not empty:
                syncd += 1
                if j < 2:
                    store.put_bytes(f"{login}/r{j}.zip", b"Z" * 50, {LAST_SYNC: meta[LAST_SYNC]})
        store.put_bytes(login, b"[]", {LAST_SYNC: "2026-11-28T00:00:00Z",
                                       SYNCD_REPOS: str(syncd), REPORTED_REPOS: "3", ERROR: ""})

    import threading

    local = threading.local()

    def local_store():  # type: ignore[no-untyped-def]
        if not hasattr(local, "store"):
            local.store = open_store(settings.store, threads=1)
        return local.store

    with ThreadPoolExecutor(16) as pool:
        for n, _ in enumerate(pool.map(one, range(users), chunksize=64), 1):
            if n % 20000 == 0:
                print(f"  generated {n} users", file=sys.stderr)


def measure(name: str, settings: config.Settings, r: redis.Redis, users: int) -> None:
    r.flushall()
    rows = []
    for label, flush in (("stats, cold cache", True), ("stats, warm cache", False)):
        if flush:
            r.flushall()
        store = open_store(settings.store)
        started = time.perf_counter()
        totals = stats.StatsPass(settings, r, store, write=True).run(progress=False)
        elapsed = time.perf_counter() - started
        assert totals.users_in_store == users, (totals.users_in_store, users)
        rows.append((label, users / elapsed, store.request_count / users))
        store.close()
    r.flushall()
    store = open_store(settings.store)
    started = time.perf_counter()
    added = stats.rebuild(settings, r, store, progress=False)
    elapsed = time.perf_counter() - started
    assert added == users and r.zcard(keys.TRACKED) == users
    rows.append(("rebuild", users / elapsed, store.request_count / users))
    store.close()
    for label, rate, per_user in rows:
        print(f"{name:>6} {users:>7} users | {label:<18} {rate:>9,.0f} users/s | "
              f"{per_user:.4f} store requests/user (naive baseline: >= 2)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    # moto_server takes ~50 puts/s per thread to fill: 20 000 users take a few minutes.
    ap.add_argument("--s3-users", type=int, default=20_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    s3_port = free_port()
    redis_proc, redis_url = start_redis(tmp / "redis")
    procs = [redis_proc, start_moto(s3_port, tmp / "moto.log")]
    try:
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        cfg = tmp / "config.yaml"
        cfg.write_text("{}\n")
        base = {"REDIS_URL": redis_url, "BULKBACKUP_CONFIG": str(cfg)}
        for name, url, users in (("local", str(tmp / "store" / "github.com"), args.users),
                                 ("moto", "s3://github.com", args.s3_users)):
            env = {**base, "BULKBACKUP_STORE": url}
            if name == "moto":
                env.update(AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{s3_port}",
                           AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                           AWS_REGION="us-east-1")
            os.environ.update(env)
            settings = config.load()
            t = time.perf_counter()
            generate(settings, users)
            print(f"{name}: generated {users} users, {3 * users} repositories in "
                  f"{time.perf_counter() - t:.0f}s", file=sys.stderr)
            measure(name, settings, r, users)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
