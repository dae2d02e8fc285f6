"""Listing quota per 1 000 users: GraphQL (per claimed batch, and as a stream) vs REST.

    python -m benchmarks.graphql_listing [--users 5000] [--seed 14]

A population like GitHub's on the stand-in (90 % of users with 0-10 repositories, 9 % with
11-100, 1 % with 1 000-1 500; listed only, nothing behind them to clone), listed three ways:

- REST: one request per user and per further page of 100 (counted, the figure is exact);
- GraphQL, `list_owners` per claimed batch of 100 users: a big owner's pages are a serial
  cursor chain, so each batch with one pays a query per page;
- GraphQL as a stream (`submit`/`step`, about 100 pages queued): the next pages of big owners
  ride along with the first pages of owners submitted later.

Points are what the stand-in charged by GitHub's rule; every listing is checked complete.
The issue's target for a first pass: <= 15 points per 1 000 users.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import redis

from bulkbackup.config import GitHubSettings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.listing import OwnerListing
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import redis_server


def population(users: int, seed: int) -> dict[str, int]:
    """A GitHub-like population: 90 % with 0-10 repositories, 9 % with 11-100, 1 % with
    1 000-1 500 (login -> repositories)."""
    rng = random.Random(seed)

    def size() -> int:
        x = rng.random()
        if x < 0.90:
            return rng.randint(0, 10)
        return rng.randint(11, 100) if x < 0.99 else rng.randint(1000, 1500)

    return {f"user{i:06d}": size() for i in range(users)}


def by_batch(lister: GraphQLLister, logins: list[str]) -> dict[str, OwnerListing]:
    got: dict[str, OwnerListing] = {}
    for i in range(0, len(logins), 100):
        got.update(lister.list_owners(logins[i:i + 100]))
    return got


def as_stream(lister: GraphQLLister, logins: list[str]) -> dict[str, OwnerListing]:
    got: dict[str, OwnerListing] = {}
    i = 0
    while i < len(logins) or lister.queued:
        if lister.queued < 100 and i < len(logins):
            for r in lister.submit(logins[i:i + 100]):
                got[r.login] = r
            i += 100
        for r in lister.step():
            got[r.login] = r
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    sizes = population(args.users, args.seed)
    per_k = 1000 / args.users
    rest = sum(max(1, -(-n // 100)) for n in sizes.values())
    print(f"{args.users} users, {sum(sizes.values())} repositories")
    print(f"REST: {rest * per_k:.0f} requests per 1 000 users")
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp) / "redis") as url, \
            Forge(Path(tmp) / "forge") as forge:
        forge.add_users({login: [RepoSpec(f"r{j}", missing=True) for j in range(n)]
                         for login, n in sizes.items()})
        counters = forge_graphql.controls(forge).counters
        settings = GitHubSettings(api_url=forge.url, tokens=("benchmark-token",))
        for name, way in (("per claimed batch of 100", by_batch), ("as a stream", as_stream)):
            counters.clear()
            broker = QuotaBroker(redis.Redis.from_url(url), settings.tokens)
            lister = GraphQLLister(settings, broker)
            got = way(lister, list(sizes))
            assert all(len(got[login].stored) == n for login, n in sizes.items())
            print(f"GraphQL {name}: {counters['points'] * per_k:.1f} points and "
                  f"{counters['requests'] * per_k:.1f} queries per 1 000 users")
            lister.close()


if __name__ == "__main__":
    main()
