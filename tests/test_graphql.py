"""The GraphQL listing client against the stand-in over HTTP, with a real Redis quota broker."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bulkbackup.config import GitHubSettings
from bulkbackup.errors import Interrupted
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.github_graphql_query import MAPPING
from bulkbackup.forge.listing import ListingOutcome as Outcome
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec

TOKEN = "ghp_graphqltesttoken0123456789"
SIZES = {"zero": 0, "one": 1, "hundred": 100, "hundred-one": 101, "big": 250}


def settings(forge: Forge, **kw: Any) -> GitHubSettings:
    base: dict[str, Any] = {"api_url": forge.url, "tokens": (TOKEN,), "backoff_s": 0.01,
                            "max_retries": 2, "timeout_s": 20.0, "max_rate_wait_s": 30.0}
    return GitHubSettings(**{**base, **kw})


@pytest.fixture
def world(forge: Forge) -> Forge:
    """Users with 0, 1, 100, 101 and 250 repositories (listed only: nothing to clone), an
    organization, and a user with real repositories: one empty, one fork."""
    users = {login: [RepoSpec(f"repo-{j}", missing=True) for j in range(n)]
             for login, n in SIZES.items()}
    users["acme-org"] = [RepoSpec("tool", missing=True), RepoSpec("site", missing=True)]
    forge.add_users(users)
    forge.add_user("octo", [RepoSpec("hello"), RepoSpec("blank", empty=True),
                            RepoSpec("spoon", fork=True)])
    forge_graphql.controls(forge).organizations.add("acme-org")
    return forge


@pytest.fixture
def lister(world: Forge, r: redis.Redis) -> Iterator[GraphQLLister]:
    s = settings(world)
    out = GraphQLLister(s, QuotaBroker(r, s.tokens))
    yield out
    out.close()


def rest_listing(forge: Forge, login: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        url = f"{forge.url}/users/{login}/repos?per_page=100&type=owner&page={page}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            chunk = json.loads(resp.read())
        out += chunk
        if len(chunk) < 100:
            return out
        page += 1


ALL = [*SIZES, "acme-org", "octo"]


def stop_when(stop: threading.Event, done: Callable[[], bool], timeout_s: float = 60) -> None:
    """Set `stop` once `done()` holds (and a moment more, for the client to be waiting)."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()


def test_listing_matches_rest_field_by_field(world: Forge, lister: GraphQLLister) -> None:
    results = lister.list_owners(ALL)
    for login in ALL:
        got, rest = results[login], rest_listing(world, login)
        assert got.outcome is Outcome.LISTED, got.error
        assert [r["name"] for r in got.stored] == [r["name"] for r in rest]
        for mine, theirs in zip(got.stored, rest, strict=True):
            for m in MAPPING:
                if m.rest == "default_branch" and theirs["name"] == "blank":
                    continue
                if m.rest == "latest_release":  # GraphQL's only (no release in this world)
                    assert mine[m.rest] is None
                    continue
                assert mine[m.rest] == theirs[m.rest], (login, theirs["name"], m.rest)
    assert [len(results[login].stored) for login in SIZES] == list(SIZES.values())
    # GitHub has no default branch ref for an empty repository; REST names the configured one
    blank = next(r for r in results["octo"].stored if r["name"] == "blank")
    assert blank["default_branch"] is None
    # 7 owners in one query; then 101's second page with 250's last two, one from each end
    assert lister.stats.queries == 2 and lister.stats.points == 2
    assert f"bearer {TOKEN}" in world.auth_headers_seen


def test_an_unknown_user_inside_a_batch_of_good_ones(lister: GraphQLLister) -> None:
    results = lister.list_owners(["one", "ghost-user", "big", "zero"])
    assert results["ghost-user"].outcome is Outcome.GONE
    assert "not found" in results["ghost-user"].error
    assert [results[x].outcome for x in ("one", "big", "zero")] == [Outcome.LISTED] * 3
    assert len(results["big"].stored) == 250
    assert lister.stats.queries == 2  # big's last two pages together, one from each end


@pytest.mark.parametrize("oversize", list(forge_graphql.Oversize))
def test_a_batch_refused_as_too_big_is_split_until_it_passes(
        world: Forge, r: redis.Redis, oversize: forge_graphql.Oversize) -> None:
    stalls = oversize is forge_graphql.Oversize.STALL
    # Stalled, a batch is known only by the client's read timeout: a short one while batches
    # stall (a batch of 1 or 2 owners that is merely slow is retried, max_retries), and for
    # as long as the stall lasts (until the stand-in stops). A slow answer must not pass for
    # a stall after that: the answers that grow the size back (64 and 100 owners, slow on a
    # loaded machine) are read with the usual timeout.
    s = settings(world, timeout_s=3.0 if stalls else 20.0, max_retries=5)
    lister = GraphQLLister(s, QuotaBroker(r, s.tokens))
    expected = {k: v.stored for k, v in lister.list_owners(ALL).items()}
    c = forge_graphql.controls(world)
    with world.lock:
        c.max_batch, c.oversize, c.stall_s = 2, oversize, 3600.0
        c.counters.clear()
    results = lister.list_owners(ALL)
    assert {k: v.stored for k, v in results.items()} == expected
    assert all(v.outcome is Outcome.LISTED for v in results.values())
    assert c.counters["oversize"] >= 2 and lister.stats.splits >= 2
    assert lister.batch < lister.max_batch
    # The size grows back once the answers pass again.
    with world.lock:
        c.max_batch = None
    lister.settings = settings(world)
    splits = lister.stats.splits
    lister.list_owners([f"nobody-{i}" for i in range(300)])
    assert lister.stats.splits == splits  # unknown: gone, but answered
    assert lister.batch == lister.max_batch == 100


def test_one_owner_answered_502_is_retried_then_failed_not_gone(
        world: Forge, lister: GraphQLLister) -> None:
    c = forge_graphql.controls(world)
    with world.lock:
        c.fail, c.fail_status = 1000, 502
    results = lister.list_owners(["one", "big"])
    assert [results[x].outcome for x in ("one", "big")] == [Outcome.FAILED] * 2
    assert "HTTP 502" in results["one"].error and results["one"].stored == []
    with world.lock:
        c.fail = 0
    assert lister.list_owners(["one"])["one"].outcome is Outcome.LISTED


def test_rate_limited_is_a_wait_not_a_failure(world: Forge, lister: GraphQLLister) -> None:
    c = forge_graphql.controls(world)
    with world.lock:
        c.rate_limited, c.limit_reset = 1, time.time() + 1
    results = lister.list_owners(["one", "big"])
    assert all(v.outcome is Outcome.LISTED for v in results.values())
    assert c.counters["rate_limited"] == 1 and lister.stats.waits == 1


def test_secondary_limit_pauses_the_token_then_retries(
        world: Forge, lister: GraphQLLister, r: redis.Redis) -> None:
    c = forge_graphql.controls(world)
    with world.lock:
        c.secondary, c.retry_after_s = 1, 1
    results = lister.list_owners(["one", "hundred"])
    assert all(v.outcome is Outcome.LISTED for v in results.values())
    assert c.counters["secondary"] == 1 and lister.stats.waits == 1
    [pause] = list(r.scan_iter("bulkbackup:quota:pause:*"))
    assert r.hget(pause, "length_s") == "1"


def test_no_request_is_sent_after_the_quota_is_known_spent(
        world: Forge, redis_url: str) -> None:
    """Two processes (two brokers, two clients) sharing one token with 2 points."""
    c = forge_graphql.controls(world)
    with world.lock:
        c.set_token_budget(TOKEN, 2, 120)
    s = settings(world, graphql_batch=1)
    first = GraphQLLister(s, QuotaBroker(redis.Redis.from_url(redis_url), s.tokens))
    assert all(v.outcome is Outcome.LISTED
               for v in first.list_owners(["one", "zero"]).values())  # 2 queries, 1 point each
    sent = c.counters["requests"]
    stop = threading.Event()
    second = GraphQLLister(s, QuotaBroker(redis.Redis.from_url(redis_url), s.tokens), stop)
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    with pytest.raises(Interrupted):
        second.list_owners(["hundred"])
    timer.join()
    assert c.counters["requests"] == sent and c.counters["rate_limited"] == 0
    assert second.stats.queries == 0


def test_a_malformed_answer_fails_that_owner_only(world: Forge, lister: GraphQLLister) -> None:
    world.add_raw_repo_entry("weird", {"name": "x", "full_name": "weird/x", "fork": "yes",
                                       "html_url": "http://forge.invalid/weird/x"})
    results = lister.list_owners(["one", "weird", "zero"])
    assert results["weird"].outcome is Outcome.FAILED and results["weird"].stored == []
    assert results["one"].outcome is results["zero"].outcome is Outcome.LISTED


def test_invalid_logins_fail_without_a_request(world: Forge, lister: GraphQLLister) -> None:
    results = lister.list_owners(["../etc", "bad login"])
    assert all(v.outcome is Outcome.FAILED for v in results.values())
    assert lister.stats.queries == 0


def test_the_token_never_reaches_redis(world: Forge, lister: GraphQLLister,
                                       r: redis.Redis) -> None:
    lister.list_owners(ALL)
    found = list(r.scan_iter("*"))
    assert found
    for key in found:
        assert TOKEN not in key and TOKEN not in json.dumps(r.hgetall(key))


def test_settings(tmp_path: Any) -> None:
    from bulkbackup import config
    from bulkbackup.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    s = config.load(cfg, {})
    assert (s.github.api, s.github.graphql_batch) == ("graphql", 100)
    assert s.github.graphql_endpoint == "https://api.github.com/graphql"
    ghe = config.load(cfg, {"GITHUB_API_URL": "https://ghe.example.com/api/v3"})
    assert ghe.github.graphql_endpoint == "https://ghe.example.com/api/graphql"
    env = config.load(cfg, {"GITHUB_GRAPHQL_URL": "http://127.0.0.1:9/gql/"})
    assert env.github.graphql_endpoint == "http://127.0.0.1:9/gql"
    for bad in ("github: {api: soap}", "github: {graphql_batch: 101}",
                "github: {graphql_url: 'ftp://x'}"):
        cfg.write_text(bad + "\n")
        with pytest.raises(ConfigError):
            config.load(cfg, {})


@pytest.mark.parametrize("headers", ["none", "stale"])
def test_rate_limited_without_spent_headers_pauses_instead_of_spinning(
        world: Forge, lister: GraphQLLister, r: redis.Redis, headers: Any) -> None:
    c = forge_graphql.controls(world)
    with world.lock:
        c.rate_limited, c.limit_reset, c.limit_headers = 5, time.time() + 60, headers
    stop = threading.Event()
    lister.stop = stop
    watcher = threading.Thread(target=stop_when, args=(
        stop, lambda: c.counters["rate_limited"] >= 1 and lister.stats.waits >= 1))
    watcher.start()
    with pytest.raises(Interrupted):
        lister.list_owners(["one"])
    watcher.join()
    assert c.counters["rate_limited"] == 1  # asked once, then waited (a 60 s pause...)
    [pause] = list(r.scan_iter("bulkbackup:quota:pause:*"))
    assert r.hget(pause, "length_s") == "30"  # ...bounded by github.max_rate_wait_s (30 here)


def test_a_stream_carries_big_owners_pages_along_with_new_owners(
        world: Forge, lister: GraphQLLister) -> None:
    small = [f"small-{i}" for i in range(98)]  # unknown: answered null, one query each
    assert lister.submit(["big"]) == []
    # Page 1 of 3 says 250: the other two are asked at once, one from each end.
    assert lister.step() == [] and lister.queued == 2
    lister.submit(small)
    finished = lister.step()  # big's two pages and the 98 first pages: one query of 100
    assert {r.login for r in finished} == {*small, "big"} and lister.queued == 0
    [big] = [r for r in finished if r.login == "big"]
    assert big.outcome is Outcome.LISTED
    assert [r["name"] for r in big.stored] == [e["name"] for e in rest_listing(world, "big")]
    assert lister.stats.queries == 2 and lister.stats.points == 2
    last = forge_graphql.controls(world).queries[-1]
    assert last.count("repositoryOwner(") == 100 and last.count("direction: DESC") == 1


def test_an_interrupted_stream_keeps_its_pages_and_can_be_abandoned(
        world: Forge, lister: GraphQLLister) -> None:
    lister.submit(["one", "big"])
    lister.stop.set()
    with pytest.raises(Interrupted):
        lister.step()
    assert lister.queued == 2
    assert sorted(lister.take_back().all) == ["big", "one"] and lister.queued == 0
    lister.stop.clear()
    assert lister.list_owners(["one"])["one"].outcome is Outcome.LISTED
