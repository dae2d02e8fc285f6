"""Listings handed over between `run` workers (run/listing_share.py, issue 22: every query
carries a full batch of owners), with real parts: redis-server, the GitHub stand-in's GraphQL
over HTTP, the local or in-memory store, `Worker`s in this process and real `bulkbackup run`
processes where the behaviour is across processes.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import layout
from bulkbackup.forge.listing import ListingOutcome, OwnerListing
from bulkbackup.queue import keys, listings
from bulkbackup.queue.connection import Scripts
from bulkbackup.run.reports import GivenBack, Lost, Synced
from bulkbackup.run.work_queue import RedisQueue
from bulkbackup.run.worker import Worker
from bulkbackup.store.memory import MemoryStore
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import (
    all_synced,
    completed,
    hooked,
    nothing_held,
    run_config,
    start_run,
    track,
    wait_for,
    worker_of,
    workers_of,
)


@pytest.fixture
def cfg(clean_env: None, redis_url: str, forge: Forge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., config.Settings]:
    """Settings for an in-process GraphQL worker, extra `run:` lines as asked."""
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    monkeypatch.setenv("BULKBACKUP_STORE", str(tmp_path / "backup" / "github.com"))

    def make(run: str = "") -> config.Settings:
        path = tmp_path / "worker.yaml"
        path.write_text("run:\n  lock_ttl_s: 2\n  claim_target_s: 1.0\n"
                        f"  work_dir: {tmp_path / 'work'}\n" + run +
                        "github:\n  backoff_s: 0.05\n  api: graphql\n")
        return config.load(path)

    return make


def intact(r: redis.Redis, *logins: str) -> None:
    """Never synced users in a `tracked` marked whole (see Worker._drained)."""
    track(r, *logins)
    r.set(keys.INTACT, int(time.time()))


def cached(r: redis.Redis) -> list[str]:
    return sorted(r.scan_iter(keys.LISTING_PREFIX + "*"))


def stop_after_a_step(worker: Worker, done: list[OwnerListing] | None) -> None:
    if done:
        worker.stop.set()


def test_the_queue_takes_a_claims_listings_in_one_round_trip_up_to_a_share(
    r: redis.Redis
) -> None:
    members = [keys.member(f"u{i}") for i in range(5)]
    listings.store(r, {members[0]: b"{0}", members[2]: b"{2}", members[3]: b"{3}"}, 60)
    assert 0 < r.ttl(keys.listing(members[0])) <= 60
    got = listings.take(Scripts(r), members, 2)
    assert got.taken == {members[0]: "{0}", members[2]: "{2}"}
    assert got.left == {members[3]}
    assert cached(r) == [keys.listing(members[3])]  # taken ones are deleted, left ones kept
    assert listings.take(Scripts(r), members, 0) == listings.Cached({}, frozenset(members[3:4]))


def test_a_listing_handed_over_by_one_worker_is_used_by_the_next_with_no_query(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge
) -> None:
    """Worker A lists 10 users in one query, keeps its share (half of them: it is one of
    one process), hands the others over and is stopped; worker B syncs every user, the
    handed-over ones from their cached listing (never asked again), the rest in one query."""
    logins = [f"h{i}" for i in range(10)]
    forge.add_users({x: [RepoSpec(f"r{j}", missing=True, size_kb=10**8) for j in range(i % 3)]
                     for i, x in enumerate(logins)})
    intact(r, *logins)
    since = math.floor(time.time())
    store = MemoryStore()
    a = worker_of(cfg(), store, hooked(stop_after_a_step), run_start=since)
    a.run()
    a.close()
    handed = [keys.login_of(k.removeprefix(keys.LISTING_PREFIX)) for k in cached(r)]
    assert len(handed) == a.worker.share.handed == 5
    assert all(0 < r.ttl(keys.listing(keys.member(x))) <= 600 for x in handed)
    requests = forge_graphql.controls(forge).counters["requests"]
    assert requests == 1

    b = worker_of(cfg(), store, index=1, run_start=since)  # the same run: A's start
    reports = b.run()
    b.close()
    assert sorted(x.login for x in reports if isinstance(x, Synced)) == logins
    assert b.worker.share.received >= 5
    assert all(forge.owner_requests(x) == 1 for x in handed)  # A's query only
    assert forge_graphql.controls(forge).counters["requests"] == requests + 1
    assert completed(r, logins, since) and nothing_held(r) and not cached(r)
    for i, login in enumerate(logins):  # the same objects as listed here
        head = store.head(layout.user_key(login))
        assert head is not None and head.get("SyncdRepos") == "0", login
        assert len(orjson.loads(store.read_bytes(layout.user_key(login)))) == i % 3


def test_a_cached_listing_that_is_malformed_stale_foreign_or_expired_is_listed_again(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge
) -> None:
    logins = ["bad-json", "foreign", "stale", "no-object", "expired", "elsewhere", "good"]
    forge.add_users({x: [RepoSpec("a", missing=True, size_kb=10**8)] for x in logins})
    forge.add_users({"other": []})
    intact(r, *logins)
    store = MemoryStore()
    w = worker_of(cfg(), store)
    run_start = w.worker.args.run_start

    github = w.worker.args.settings.github

    def listing(login: str, at: float, repos: object = None,
                api: str = github.api_url) -> bytes:
        doc = OwnerListing(login, ListingOutcome.LISTED).to_json()
        assert doc is not None
        if repos is not None:
            doc["repos"] = repos
        return orjson.dumps({"at": at, "api": api, "git": github.clone_host, "listing": doc})

    good = listing("good", run_start + 0.5)  # `good` with no repository: believed
    listings.store(r, {keys.member(x): data for x, data in (
        ("bad-json", b"{not json"),
        ("foreign", listing("other", run_start + 0.5)),
        ("stale", listing("stale", run_start - 5)),  # listed before this run started
        ("no-object", listing("no-object", run_start + 0.5, ["not an entry"])),
        # Listed by a host that reaches the forge at another address (its clone URLs name it).
        ("elsewhere", listing("elsewhere", run_start + 0.5, api="http://10.0.0.9:1")),
        ("good", good))}, 600)
    listings.store(r, {keys.member("expired"): listing("expired", run_start + 0.5)}, 1)
    wait_for(lambda: r.get(keys.listing(keys.member("expired"))) is None, 10, "expiry")
    reports = w.run()
    w.close()
    assert sorted(x.login for x in reports if isinstance(x, Synced)) == sorted(logins)
    assert [x for x in logins if forge.owner_requests(x) != 1] == ["good"]
    for login in logins:
        stored = orjson.loads(store.read_bytes(layout.user_key(login)))
        assert len(stored) == (0 if login == "good" else 1), login
    assert nothing_held(r) and not cached(r)


def test_a_lock_lost_at_the_hand_over_is_reported_and_the_next_claim_uses_the_listing(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge
) -> None:
    """The lock of a user about to be handed over passes to someone else (it expired): the
    give back finds it lost (reported Lost, nothing written); once that lock is gone the
    user is claimed again and synced from its cached listing, not listed twice."""
    forge.add_users({"kept": [RepoSpec("a", missing=True, size_kb=10**8)],
                     "taken": [RepoSpec("a", missing=True, size_kb=10**8)]})
    intact(r, "kept", "taken")
    since = math.floor(time.time())
    member = keys.member("taken")

    def steal(_worker: Worker, done: list[OwnerListing] | None) -> None:
        if done and not r.exists(keys.listing(member)):
            r.set(keys.lock(member), "2.0.elsewhere", ex=2)

    w = worker_of(cfg(), MemoryStore(), hooked(steal))
    reports = w.run()
    w.close()
    assert reports.count(Lost(0, "taken")) == 1
    assert sorted(x.login for x in reports if isinstance(x, Synced)) == ["kept", "taken"]
    assert not [x for x in reports if isinstance(x, GivenBack)]  # a hand-over is no give back
    assert forge.owner_requests("taken") == 1 and w.worker.share.received == 1
    assert completed(r, ["kept", "taken"], since) and nothing_held(r)


class CacheDown(RedisQueue):
    """A worker's queue whose listing cache does not answer (a connection error), the rest
    of Redis as usual."""

    def take_listings(self, members: list[str], most: int) -> listings.Cached:
        raise redis.ConnectionError("the listing cache is down (test)")

    def store_listings(self, found: dict[str, bytes]) -> None:
        raise redis.ConnectionError("the listing cache is down (test)")


@pytest.mark.parametrize("case", ["too large", "cache down"])
def test_a_listing_that_cannot_be_handed_over_is_synced_by_its_worker(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, case: str
) -> None:
    """Too large to cache, or Redis refusing it: the worker keeps its users and syncs them
    itself, each listed once; a listing cached for a user whose claim cannot read it is left
    to expire and the user listed."""
    logins = [f"k{i}" for i in range(8)]
    forge.add_users({x: [RepoSpec("a", missing=True, size_kb=10**8)] for x in logins})
    intact(r, *logins)
    since = math.floor(time.time())
    w = worker_of(cfg(), MemoryStore())
    if case == "too large":
        w.worker.share.max_bytes = 20
    else:
        args = w.worker.args
        w.worker.queue.close()
        w.worker.queue = w.worker.share.queue = CacheDown(
            args.settings, args.worker_id, args.run_start, args.clock_offset_s)
        doc = OwnerListing("k0", ListingOutcome.LISTED).to_json()
        listings.store(r, {keys.member("k0"): orjson.dumps(
            {"at": args.run_start + 0.5, "listing": doc})}, 600)
    reports = w.run()
    w.close()
    assert sorted(x.login for x in reports if isinstance(x, Synced)) == logins
    assert w.worker.share.handed == 0 and w.worker.share.received == 0
    assert all(forge.owner_requests(x) == 1 for x in logins)
    assert forge_graphql.controls(forge).counters["requests"] == 1  # one query for all
    assert cached(r) == ([] if case == "too large" else [keys.listing(keys.member("k0"))])
    assert completed(r, logins, since) and nothing_held(r)


def run_env(tmp_path: Path, forge: Forge, redis_url: str, extra: str = "") -> dict[str, str]:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(run_config("  skip_forks: true\n" + extra, "  max_rate_wait_s: 30\n"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("GITHUB_TOKEN", "GITHUB_TOKENS", "BULKBACKUP_DEBUG")}
    return {**env, "BULKBACKUP_CONFIG": str(cfg), "GITHUB_API_URL": forge.url,
            "BULKBACKUP_STORE": str(tmp_path / "store"), "REDIS_URL": redis_url,
            "GITHUB_API": "graphql"}


def population(forge: Forge, users: int, big: int) -> list[str]:
    """``users`` owners with 0-3 forks each (listed only: skip_forks), ``big`` of them with
    150 (two pages)."""
    logins = [f"p{i:03d}" for i in range(users)]
    forge.add_users({x: [RepoSpec(f"r{j}", missing=True, fork=True)
                         for j in range(150 if i < big else i % 4)]
                     for i, x in enumerate(logins)})
    return logins


def test_a_run_of_300_users_in_3_processes_sends_full_queries(
    clean_env: None, redis_url: str, r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    """300 users, 2 of them with a second page: 3 queries of 100 owners and the second
    pages (with slack for a claim that meets handed-over users mid-way), where claims sized
    by each process's share of the users left sent many small ones."""
    logins = population(forge, 300, 2)
    track(r, *logins)
    start = time.time() - 1
    proc = start_run(run_env(tmp_path, forge, redis_url), "--procs", "3", "--no-stats")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert all_synced(r, logins, start) and "300 users synced" in err
    c = forge_graphql.controls(forge)
    aliases = [q.count("repositoryOwner(") for q in c.queries]
    assert sum(aliases) == 300 + 2, aliases  # each owner asked once, and the second pages
    assert c.counters["points"] <= math.ceil(300 / 100) + 2 + 1, aliases
    assert not cached(r)


def test_a_worker_killed_after_handing_listings_over_loses_nothing(
    clean_env: None, redis_url: str, r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    """Every worker is paused while listings are cached; one is killed: the run still syncs
    every user, and each user whose listing was cached then is never asked again."""
    logins = population(forge, 400, 0)
    track(r, *logins)
    start = time.time() - 1
    proc = start_run(run_env(tmp_path, forge, redis_url), "--procs", "2", "--no-stats")
    seen: list[str] = []
    for _ in range(200):
        wait_for(lambda: cached(r) or proc.poll() is not None, 120, "a listing handed over")
        workers = workers_of(proc.pid)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        seen = cached(r)
        if seen or proc.poll() is not None:
            break
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert seen, "no listing seen handed over"
    os.kill(workers[0], signal.SIGKILL)
    for pid in workers[1:]:
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert all_synced(r, logins, start)
    again = [k for k in seen if forge.owner_requests(keys.login_of(
        k.removeprefix(keys.LISTING_PREFIX))) != 1]
    assert again == []
    assert not cached(r)


def test_two_workers_in_process_share_listings_and_do_each_user_once(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge
) -> None:
    logins = [f"s{i:02d}" for i in range(40)]
    forge.add_users({x: [RepoSpec("only", missing=True, size_kb=10**8)] for x in logins})
    intact(r, *logins)
    since = math.floor(time.time())
    shared = MemoryStore()
    workers = [worker_of(cfg(), shared, index=i) for i in range(2)]
    threads = [threading.Thread(target=w.worker.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    done = [x.login for w in workers for x in w.reports() if isinstance(x, Synced)]
    for w in workers:
        w.close()
    assert sorted(done) == logins  # each exactly once
    assert all(forge.owner_requests(x) == 1 for x in logins)  # and listed once
    assert completed(r, logins, since) and nothing_held(r) and not cached(r)
