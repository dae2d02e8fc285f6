"""GitHub API quota of the kinds beyond git (wikis, gists, LFS objects, releases), each on vs
off, for real `bulkbackup run` passes on the stand-in.

    python -m benchmarks.kinds [--users 1000] [--seed 14] [--procs 2] [--apis graphql,rest]

The population is benchmarks/quota.py's (graphql_listing.population: 90 % of users with
0-10 repositories, 9 % with 11-100, 1 % with 1 000-1 500; forks with nothing behind them,
`run.skip_forks` on: every API request is real, no git runs for them), plus, per user drawn
with the same seed, real non-fork repositories and gists at rates assumed GitHub-like:
GIST_USERS of the users have 1-3 public gists, WIKI_USERS a repository with a wiki,
RELEASE_USERS a repository with a release (one small asset), LFS_USERS a repository with an
LFS object. Each variant (every kind off; one kind on; all on) runs a first pass on a fresh
store and an unchanged re-pass, on both APIs. Figures per 1 000 users: GraphQL points and
queries (GitHub's published rule, as the stand-in charges) and the connections they were
reckoned from (a query of 100 owners costs round(connections / 100), at least 1: the
points a fleet's full batches would pay; small batches pay 1 point each), REST `core`
points (requests answered 200: a 304 is free) and requests, and git requests (ref listings,
LFS batch calls and asset downloads: no API quota).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from benchmarks.graphql_listing import as_stream, population
from benchmarks.quota import TOKEN, Bench
from bulkbackup.config import GitHubSettings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.lfs import LfsObject
from bulkbackup.testing.releases import AssetSpec, ReleaseSpec
from bulkbackup.testing.services import redis_server

GIST_USERS = 0.08
WIKI_USERS = 0.03
RELEASE_USERS = 0.02
LFS_USERS = 0.005
KINDS = ("wikis", "gists", "lfs", "releases")
VARIANTS: dict[str, tuple[str, ...]] = {"none": (), **{k: (k,) for k in KINDS}, "all": KINDS}


def build(forge: Forge, sizes: dict[str, int], seed: int) -> dict[str, int]:
    """The population with its extra kinds; how many users have each."""
    rng = random.Random(seed + 1)
    users: dict[str, list[RepoSpec]] = {}
    counts = dict.fromkeys(KINDS, 0)
    gists: list[tuple[str, str]] = []
    releases: list[str] = []
    for login, n in sizes.items():
        specs = [RepoSpec(f"r{j}", missing=True, fork=True) for j in range(n)]
        if rng.random() < WIKI_USERS:
            specs.append(RepoSpec("with-wiki", wiki={"Home.md": b"# Home\n"}))
            counts["wikis"] += 1
        if rng.random() < RELEASE_USERS:
            specs.append(RepoSpec("with-release"))
            releases.append(login)
            counts["releases"] += 1
        if rng.random() < LFS_USERS:
            specs.append(RepoSpec("with-lfs", lfs={"big.bin": LfsObject(b"lfs " * 64)}))
            counts["lfs"] += 1
        if rng.random() < GIST_USERS:
            gists += [(login, f"{rng.getrandbits(128):032x}") for _ in range(rng.randint(1, 3))]
            counts["gists"] += 1
        users[login] = specs
    forge.add_users(users)
    for login in releases:
        forge.releases.add(login, "with-release", ReleaseSpec(
            "v1.0", assets=(AssetSpec("tool.bin", b"\x7fELF" + bytes(200)),)))
    for login, gist_id in gists:
        forge.add_gist(login, gist_id, {"snippet.py": f"# {gist_id}\n".encode()})
    return counts


class KindsBench(Bench):
    def kinds_env(self, api: str, store: str, on: tuple[str, ...]) -> dict[str, str]:
        env = self.env(api, store, token=True)
        flags = "".join(f"  {k}: {'true' if k in on else 'false'}\n" for k in KINDS)
        cfg = Path(env["BULKBACKUP_CONFIG"])
        cfg.write_text(cfg.read_text().replace("run:\n", "run:\n" + flags, 1))
        return env

    def figures(self) -> tuple[int, int, int, int, int, int]:
        c = forge_graphql.controls(self.forge).counters
        f = self.forge.counters
        git = f["info_refs"] + f["lfs_batch"] + f["asset_download"]
        return (c["points"], c["requests"], c["connections"], f["api_200"], f["api"], git)


def full_batches(forge: Forge, logins: list[str]) -> None:
    """GraphQL's listing alone in full batches of 100 owners (as a fleet's stream fills
    them; graphql_listing.as_stream), gists off vs on: the points `run` passes of many users
    pay, which this benchmark's small passes (a few dozen owners a query) do not show."""
    counters = forge_graphql.controls(forge).counters
    settings = GitHubSettings(api_url=forge.url, tokens=(TOKEN,))
    per_k = 1000 / len(logins)
    for gists in (False, True):
        counters.clear()
        lister = GraphQLLister(settings, QuotaBroker(None, settings.tokens), gists=gists)
        got = as_stream(lister, logins)
        asked = sum(1 for r in got.values() if r.gists is not None)
        lister.close()
        print(f"graphql listing in full batches, gists {'on ' if gists else 'off'}: "
              f"{counters['points'] * per_k:.1f} points, {counters['requests'] * per_k:.1f} "
              f"queries, {counters['connections'] * per_k:.0f} connections per 1 000 users; "
              f"gists asked for {asked} of {len(logins)} owners")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--apis", default="graphql,rest")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    sizes = population(args.users, args.seed)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp) / "redis") as url, \
            Forge(Path(tmp) / "forge") as forge:
        counts = build(forge, sizes, args.seed)
        bench = KindsBench(Path(tmp), forge, url, args.procs)
        forge.set_token_budget(TOKEN, 10**9, 3600)  # cost, not waits (as quota.py)
        forge_graphql.controls(forge).set_token_budget(TOKEN, 10**9, 3600)
        logins, per_k = list(sizes), 1000 / len(sizes)
        full_batches(forge, logins)
        print(f"{len(logins)} users, {sum(sizes.values())} fork repositories; users with "
              + ", ".join(f"{k} {n}" for k, n in counts.items())
              + f"; bulkbackup run --procs {args.procs}")
        print(f"{'api':<8} {'kinds on':<9} {'pass':<8} {'gql points':>10} {'gql queries':>11} "
              f"{'gql conns':>9} {'core points':>11} {'core requests':>13} {'git requests':>12} "
              f"{'s':>6}   (per 1 000 users)")
        for api in args.apis.split(","):
            for variant in filter(None, args.variants.split(",")):
                bench.track(logins)
                for name in ("first", "re-pass"):
                    bench.reset()
                    env = bench.kinds_env(api, f"store-{api}-{variant}", VARIANTS[variant])
                    seconds = bench.run([env], logins)
                    got = [x * per_k for x in bench.figures()]
                    print(f"{api:<8} {variant:<9} {name:<8} {got[0]:>10.1f} {got[1]:>11.1f} "
                          f"{got[2]:>9.0f} {got[3]:>11.1f} {got[4]:>13.1f} {got[5]:>12.1f} "
                          f"{seconds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
