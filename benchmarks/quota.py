"""GitHub API quota of `bulkbackup run`, REST vs GraphQL, side by side on the stand-in.

    python -m benchmarks.quota [--users 3000] [--seed 14] [--procs 4] [--api graphql]

1. Per 1 000 users, a first pass and an unchanged re-pass of real `bulkbackup run --procs P`
   processes over a population like GitHub's (90 % of users with 0-10 repositories, 9 % with
   11-100, 1 % with 1 000-1 500). The repositories are forks with nothing behind them and
   `run.skip_forks` is on: every API request and point is real, no git runs. Points are
   what the stand-in charged: GraphQL by GitHub's published rule, REST one per request
   answered 200 (GitHub does not count a 304 against the quota); requests are all of them.
   For GraphQL, how full its queries were: the run's floor (every page in queries of
   github.graphql_batch, at least the longest owner's queries one after the other: a big
   owner's pages are read from both ends, forge/graphql_paging.py), and the queries that
   carried fewer than half a batch, with how many of their owners were next pages (the tail:
   big owners' pages follow a cursor chain, one query after another).
2. The fleet figure: 2 runs x 4 processes (two `BULKBACKUP_WORKER_HOST`s) sharing one token
   whose quota in the stand-in is small and runs out several times: requests the stand-in
   received after one of its answers had said the quota was spent (the stand-in counts them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.graphql_listing import population
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import redis_server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-quota-token"  # the stand-in's, not a secret


@dataclass
class Cost:
    points: int
    requests: int


class Bench:
    def __init__(self, tmp: Path, forge: Forge, redis_url: str, procs: int,
                 run_extra: str = "") -> None:
        self.tmp, self.forge, self.redis_url, self.procs = tmp, forge, redis_url, procs
        self.run_extra = run_extra  # more `run:` settings for every pass
        self.r = redis.Redis.from_url(redis_url)

    def env(self, api: str, store: str, extra: str = "", token: bool = False) -> dict[str, str]:
        cfg = self.tmp / f"{api}-{store}.yaml"
        cfg.write_text("run:\n  skip_forks: true\n  lock_ttl_s: 10\n" + self.run_extra +
                       "github:\n  max_rate_wait_s: 60\n" + extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
        env.update({"BULKBACKUP_CONFIG": str(cfg), "REDIS_URL": self.redis_url,
                    "GITHUB_API_URL": self.forge.url, "GITHUB_API": api,
                    "BULKBACKUP_STORE": str(self.tmp / store)})
        if token:
            env["GITHUB_TOKEN"] = TOKEN
        return env

    def track(self, logins: list[str]) -> None:
        self.r.flushall()
        self.r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in logins})

    def run(self, envs: list[dict[str, str]], logins: list[str]) -> float:
        start = time.time()
        time.sleep(1.1)  # the last pass's sync times must be before this run's start
        procs = [subprocess.Popen(
            [sys.executable, "-m", "bulkbackup", "run", "--procs", str(self.procs), "--no-stats"],
            env={**env, "BULKBACKUP_WORKER_HOST": f"host{i}"}, cwd=ROOT, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i, env in enumerate(envs)]
        for proc in procs:
            _, err = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"run failed ({proc.returncode}):\n{err[-3000:]}")
        done = self.r.zcount("tracked", start, "(inf")
        if done != len(logins):
            raise SystemExit(f"only {done} of {len(logins)} users synced")
        return time.time() - start

    def counted(self, api: str) -> Cost:
        if api == "graphql":
            c = forge_graphql.controls(self.forge).counters
            return Cost(c["points"], c["requests"])
        f = self.forge.counters
        return Cost(f["api_200"], f["api"])

    def reset(self) -> None:
        self.forge.reset_counters()
        with self.forge.lock:
            forge_graphql.controls(self.forge).counters.clear()
            forge_graphql.controls(self.forge).queries.clear()

    def fill(self, sizes: dict[str, int]) -> str:
        """How full the last pass's GraphQL queries were (see the module's text)."""
        with self.forge.lock:
            queries = list(forge_graphql.controls(self.forge).queries)
        owners = [q.count("repositoryOwner(") for q in queries]
        # Next pages: by cursor, and big owners' first pages from the other end.
        nexts = [q.count("after: $c") + q.count("CREATED_AT, direction: DESC})")
                 for q in queries]
        pages = sum(max(1, -(-n // 100)) for n in sizes.values())
        floor = max(-(-pages // 100), max(rounds(n) for n in sizes.values()))
        small = [i for i, n in enumerate(owners) if 0 < n < 50]
        return (f"    {len([n for n in owners if n])} queries for {pages} pages (floor "
                f"{floor}); {len(small)} with < 50 owners, carrying "
                f"{sum(owners[i] for i in small)} owners of which "
                f"{sum(nexts[i] for i in small)} next pages")


def rounds(repos: int) -> int:
    """The queries one after the other that list an owner of ``repos`` repositories: its
    first page, then a page from each end a query until the two pass each other
    (forge/graphql_paging.py)."""
    if repos <= 200:
        return max(1, -(-repos // 100))
    return 2 + (repos - 99) // 200


def passes(bench: Bench, sizes: dict[str, int], apis: tuple[str, ...]) -> None:
    logins = list(sizes)
    per_k = 1000 / len(logins)
    print(f"{len(logins)} users, {sum(sizes.values())} repositories, "
          f"bulkbackup run --procs {bench.procs}")
    print(f"{'api':<8} {'pass':<10} {'points/1000 users':>18} {'requests/1000 users':>20} "
          f"{'seconds':>8}")
    # A token with quota to spare (the stand-in's answers without one say 5 000 an hour, and
    # the broker believes them): these passes measure cost, not waits.
    bench.forge.set_token_budget(TOKEN, 10**9, 3600)
    forge_graphql.controls(bench.forge).set_token_budget(TOKEN, 10**9, 3600)
    for api in apis:
        bench.track(logins)
        for name in ("first", "re-pass"):
            bench.reset()
            seconds = bench.run([bench.env(api, f"store-{api}", token=True)], logins)
            got = bench.counted(api)
            print(f"{api:<8} {name:<10} {got.points * per_k:>18.1f} "
                  f"{got.requests * per_k:>20.1f} {seconds:>8.1f}", flush=True)
            if api == "graphql":
                print(bench.fill(sizes), flush=True)


def fleet(bench: Bench, users: int) -> None:
    """2 runs x procs processes, one token, a small quota that runs out several times."""
    logins = [f"fleet{i:04d}" for i in range(users)]
    bench.forge.add_users({login: [] for login in logins})
    window_s = 4.0
    print(f"fleet: 2 runs x {bench.procs} processes, one token, {users} users")
    for api, quota, extra in (("rest", 60, ""), ("graphql", 12, "  graphql_batch: 5\n")):
        bench.reset()
        if api == "rest":
            bench.forge.set_token_budget(TOKEN, quota, window_s)
        else:
            forge_graphql.controls(bench.forge).set_token_budget(TOKEN, quota, window_s)
        bench.track(logins)
        envs = [bench.env(api, f"fleet-{api}", extra, token=True) for _ in range(2)]
        seconds = bench.run(envs, logins)
        if api == "rest":
            f = bench.forge.counters
            after, refused, sent = f["api_after_spent"], f["api_403"], f["api"]
        else:
            c = forge_graphql.controls(bench.forge).counters
            after, refused, sent = c["after_spent"], c["rate_limited"], c["requests"]
        print(f"  {api:<8} quota {quota} per {window_s:g}s: {sent} requests in {seconds:.1f}s, "
              f"{after} sent after the quota was known spent, {refused} refused")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--fleet-users", type=int, default=400, help="0: no fleet figure")
    ap.add_argument("--api", choices=("rest", "graphql", "both"), default="both")
    ap.add_argument("--listing-cache-s", type=int, default=None,
                    help="run.listing_cache_s for the runs (0: listings not handed over)")
    args = ap.parse_args()
    sizes = population(args.users, args.seed)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp) / "redis") as url, \
            Forge(Path(tmp) / "forge") as forge:
        forge.add_users({login: [RepoSpec(f"r{j}", missing=True, fork=True) for j in range(n)]
                         for login, n in sizes.items()})
        extra = ("" if args.listing_cache_s is None
                 else f"  listing_cache_s: {args.listing_cache_s}\n")
        bench = Bench(Path(tmp), forge, url, args.procs, extra)
        passes(bench, sizes, ("rest", "graphql") if args.api == "both" else (args.api,))
        if args.fleet_users:
            fleet(bench, args.fleet_users)


if __name__ == "__main__":
    main()
