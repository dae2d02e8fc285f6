"""Issue 14 wired into `bulkbackup run` and `sync`: GraphQL listing of claimed batches and the
shared quota broker, with real parts (the `bulkbackup` command in child processes, a real
redis-server, the GitHub stand-in's REST and GraphQL over HTTP, real git, the local store).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bulkbackup.config import StoreSettings
from bulkbackup.errors import RateLimited
from bulkbackup.forge.github_graphql_query import MAPPING
from bulkbackup.forge.quota_broker import QuotaBroker, Reservation, Resource, Wait, WaitReason
from bulkbackup.store import open_store
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port
from tests.helpers import run_cli, run_config, start_run, track

TOKEN = "ghp_wire14SECRETtoken0123456789abcdef"
HUGE_KB = 10_000_000  # above run.max_repo_kb: recorded as skipped, never cloned
# Users whose repositories have nothing behind them (listed only): cheap at any count.
COUNTS = {"zero": 0, "one-listed": 1, "hundred": 100, "hundred-one": 101, "big": 250}
FILLERS = [f"f{i:02d}" for i in range(16)]


def listed_only(n: int) -> list[RepoSpec]:
    return [RepoSpec(f"r{j:03d}", missing=True, size_kb=HUGE_KB) for j in range(n)]


@pytest.fixture
def world(forge: Forge) -> Forge:
    users = {login: listed_only(n) for login, n in COUNTS.items()}
    users["acme-org"] = [RepoSpec("tool", tags=["v1"]), RepoSpec("blank", empty=True),
                         RepoSpec("fork", fork=True)]
    users["octo"] = [RepoSpec("hello", branches={"dev": {"d.txt": b"dev\n"}}, tags=["v2"])]
    users.update({f: listed_only(i % 3) for i, f in enumerate(FILLERS)})
    forge.add_users(users)
    forge_graphql.controls(forge).organizations.add("acme-org")
    return forge


ALL = [*COUNTS, "acme-org", "octo", "ghost-user", *FILLERS]


def run_env(tmp_path: Path, forge: Forge, redis_url: str, store: Path, api: str,
            extra: str = "", github: str = "") -> dict[str, str]:
    cfg = tmp_path / f"run-{api}-{store.name}.yaml"
    cfg.write_text(run_config("  claim_batch_max: 2\n" + extra,
                              "  max_rate_wait_s: 30\n" + github))
    env = {k: v for k, v in os.environ.items()
           if k not in ("GITHUB_TOKEN", "GITHUB_TOKENS", "BULKBACKUP_DEBUG")}
    return {**env, "BULKBACKUP_CONFIG": str(cfg), "GITHUB_API_URL": forge.url,
            "BULKBACKUP_STORE": str(store), "REDIS_URL": redis_url, "GITHUB_API": api}


def run(env: dict[str, str], *args: str) -> str:
    proc = start_run(env, "--no-stats", *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


def track_alone(r: redis.Redis, logins: list[str]) -> None:
    """A flushed Redis that tracks only ``logins``."""
    r.flushall()
    track(r, *logins)


def bundle_heads(path: Path, tmp_path: Path) -> str:
    repo = tmp_path / "heads-repo"
    if not repo.exists():
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return subprocess.run(["git", "bundle", "list-heads", str(path)], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def content(store_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """What the pipeline stored, up to times: per key its size class, error and the fields
    the pipeline decides with; user objects' repositories; bundle refs."""
    store = open_store(StoreSettings(url=str(store_dir)), create=False)
    out: dict[str, Any] = {}
    try:
        for info in store.list(""):
            head = store.head(info.key)
            assert head is not None
            item: dict[str, Any] = {"has_data": info.size > 0,
                                    "error": head.get("Error")[:60],
                                    "times": (head.get("PushedAt"), head.get("UpdatedAt")),
                                    "counts": (head.get("SyncdRepos"), head.get("ReportedRepos"))}
            if "/" not in info.key:  # a user's object: its repositories by name
                repos = orjson.loads(store.read_bytes(info.key))
                item["repos"] = {r["name"]: r for r in repos}
            elif info.key.endswith(".bundle") and info.size > 0:
                item["heads"] = bundle_heads(store_dir / info.key, tmp_path)
            out[info.key] = item
    finally:
        store.close()
    return out


# REST fields the pipeline reads (backup.py); GraphQL names no default branch for an empty
# repository (documented), and the error text of a gone user names the API's answer.
USED = ("name", "full_name", "fork", "pushed_at", "updated_at", "size", "clone_url",
        "default_branch", "html_url")


def assert_same(rest: dict[str, Any], graphql: dict[str, Any]) -> None:
    assert rest.keys() == graphql.keys()
    for key, a in rest.items():
        b = graphql[key]
        if "repos" in a:
            assert a["repos"].keys() == b["repos"].keys(), key
            for name, ra in a["repos"].items():
                rb = b["repos"][name]
                for field in USED:
                    if field == "default_branch" and name == "blank":
                        assert rb[field] is None
                        continue
                    assert ra[field] == rb[field], (key, name, field)
                assert set(rb) == {m.rest for m in MAPPING}, key  # REST names, nothing more
        if key == "ghost-user":
            assert "not found on GitHub" in a["error"] and "not found on GitHub" in b["error"]
            a, b = {**a, "error": ""}, {**b, "error": ""}
        assert {k: v for k, v in a.items() if k != "repos"} == \
            {k: v for k, v in b.items() if k != "repos"}, key


def test_graphql_run_stores_what_the_rest_run_stores(
    clean_env: None, redis_url: str, r: redis.Redis, world: Forge, tmp_path: Path
) -> None:
    stores = {api: tmp_path / f"store-{api}" for api in ("rest", "graphql")}
    c = forge_graphql.controls(world)
    track_alone(r, ALL)
    run(run_env(tmp_path, world, redis_url, stores["rest"], "rest"), "--procs", "2")
    rest_api_requests = world.counters["api"]
    assert rest_api_requests >= len(ALL) and c.counters["requests"] == 0

    # GraphQL: a batch of more than 4 owners is answered 502 until it is split.
    with world.lock:
        c.max_batch, c.oversize = 4, forge_graphql.Oversize.BAD_GATEWAY
    world.reset_counters()
    track_alone(r, ALL)
    err = run(run_env(tmp_path, world, redis_url, stores["graphql"], "graphql"), "--procs", "1")
    assert world.counters["api"] == 0  # no REST listing at all
    assert c.counters["oversize"] >= 1 and c.counters["status_200"] >= 1
    assert f"{len(ALL)} users synced" in err
    assert_same(content(stores["rest"], tmp_path), content(stores["graphql"], tmp_path))
    assert r.zcount("tracked", "-inf", "(inf") == len(ALL)  # every user completed

    # The unchanged re-pass: nothing cloned; queries carry users from several claims
    # (run.claim_batch_max is 2 here) and the big owners' next pages.
    with world.lock:
        c.max_batch = None
        c.queries.clear()
    world.reset_counters()
    track_alone(r, ALL)
    run(run_env(tmp_path, world, redis_url, stores["graphql"], "graphql"), "--procs", "1")
    assert world.counters["info_refs"] == 0 and world.counters["api"] == 0
    aliases = [q.count("repositoryOwner(") for q in c.queries]
    assert max(aliases) > 2, aliases
    assert len(aliases) < len(ALL) / 2, aliases


def test_sync_lists_its_users_in_one_graphql_query(
    clean_env: None, world: Forge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    monkeypatch.setenv("GITHUB_API_URL", world.url)
    monkeypatch.setenv("BULKBACKUP_STORE", str(store_dir))
    c = forge_graphql.controls(world)
    proc = run_cli("sync", "octo", "ghost-user", "acme-org", "zero",
                   env={"GITHUB_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    assert "4 users, 1 with errors" in proc.stderr
    assert c.counters["requests"] == 1 and world.counters["api"] == 0
    got = content(store_dir, tmp_path)
    assert "not found on GitHub" in got["ghost-user"]["error"]
    assert got["ghost-user"]["repos"] == {}  # stored as "[]", as REST's 404
    assert got["octo/hello.bundle"]["has_data"] and "refs/heads/dev" in got[
        "octo/hello.bundle"]["heads"]
    assert got["acme-org"]["counts"] == ("2", "3")  # tool and fork archived; blank is empty
    assert_no_token(TOKEN, None, proc.stdout + proc.stderr, store_dir)


def redis_value(r: redis.Redis, key: str) -> object:
    kind = r.type(key)
    if kind == "hash":
        return r.hgetall(key)
    if kind == "set":
        return r.smembers(key)
    if kind == "zset":
        return r.zrange(key, 0, -1, withscores=True)
    if kind == "list":
        return r.lrange(key, 0, -1)
    return r.get(key)


def assert_no_token(token: str, r: redis.Redis | None, logs: str, store_dir: Path) -> None:
    """The token is in no Redis key or value, no log line, no stored object or metadata."""
    assert token not in logs
    if r is not None:
        for key in r.scan_iter("*"):
            assert token not in f"{key}{redis_value(r, key)!r}", key
    for path in store_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("api", ["graphql", "rest"])
def test_two_hosts_sharing_a_token_stop_once_its_quota_is_known_spent(
    clean_env: None, redis_url: str, r: redis.Redis, forge: Forge, tmp_path: Path, api: str
) -> None:
    logins = [f"q{i:02d}" for i in range(41)]  # every tenth with a repository to archive
    forge.add_users({login: [RepoSpec("a")] if i % 10 == 0 else []
                     for i, login in enumerate(logins)})
    reset_in_s = 8.0
    # A quota that runs out mid-run: GraphQL 6 points (a query costs 1), REST 15 requests
    # (one a user); more than the 4 processes' first requests, sent before any answer.
    if api == "graphql":
        forge_graphql.controls(forge).set_token_budget(TOKEN, 6, reset_in_s)
    else:
        forge.set_token_budget(TOKEN, 15, reset_in_s)
    reset_at = time.time() + reset_in_s
    track_alone(r, logins)
    store_dir = tmp_path / "store"
    # GraphQL queries of at most 3 owners: 41 users need more than one window's 6 points.
    env = {**run_env(tmp_path, forge, redis_url, store_dir, api, github="  graphql_batch: 3\n"),
           "GITHUB_TOKEN": TOKEN}
    a = start_run(env, "--procs", "2", "--no-stats", host="hostA")
    b = start_run(env, "--procs", "2", "--no-stats", host="hostB")
    out_a, err_a = a.communicate(timeout=300)
    out_b, err_b = b.communicate(timeout=300)
    ended = time.time()
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert ended > reset_at  # the quota ran out: the runs waited for its reset
    assert "0 users with errors" in err_a and "0 users with errors" in err_b
    done = [int(e.split(" users synced")[0].rsplit(" ", 1)[-1]) for e in (err_a, err_b)]
    assert sum(done) == len(logins)
    assert r.zcount("tracked", "-inf", "(inf") == len(logins)
    if api == "graphql":
        c = forge_graphql.controls(forge).counters
        assert c["after_spent"] == 0 and c["rate_limited"] == 0, c
        assert c["points"] > 6  # more than one window's worth: the run went on after the reset
    else:
        assert forge.counters["api_after_spent"] == 0, forge.counters
        assert forge.counters["api_403"] == 0, forge.counters
        assert forge.counters["api_200"] >= len(logins)
    assert "rate limit" in err_a + err_b  # the wait was seen and logged
    assert any(TOKEN in h for h in forge.auth_headers_seen)  # the token was used
    assert_no_token(TOKEN, r, out_a + err_a + out_b + err_b, store_dir)
    assert json.dumps(r.keys("bulkbackup:quota:*")).count("sha256-") >= 1


# -- the broker's additions for the wiring ----------------------------------------------------

def test_broker_peeks_bounds_resets_and_pauses_and_survives_redis(redis_url: str) -> None:
    broker = QuotaBroker(redis.Redis.from_url(redis_url), [TOKEN])
    first = broker.reserve(Resource.CORE)
    assert isinstance(first, Reservation) and first.remaining == 4999  # assumed: 5 000 an hour
    # The first answer replaces the assumed window even when its reset is the same moment
    # (a token's window starts with its first request): a 12 500 token is not held to 5 000.
    window = {"X-RateLimit-Limit": "12500", "X-RateLimit-Reset": str(int(time.time()) + 3600)}
    assert broker.record(first, {**window, "X-RateLimit-Remaining": "12499"}) == 12499
    assert broker.record(first, {**window, "X-RateLimit-Remaining": "12600"}) == 12499
    broker.record(first, {**window, "X-RateLimit-Remaining": "5000"})
    peeked = broker.reserve(Resource.CORE, peek=True)  # a look charges nothing
    assert isinstance(peeked, Reservation) and peeked.remaining == 5000
    # A reset a century away is taken as at most GitHub's hour.
    broker.record(first, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4000000000"})
    wait = broker.reserve(Resource.CORE)
    assert isinstance(wait, Wait) and 3500 < wait.seconds <= 3601
    # Four processes reserve before any answer of a new window: the first answer (12 - 1)
    # cannot have counted the three others still in flight.
    fresh = QuotaBroker(redis.Redis.from_url(redis_url), ["ghp_another_token_for_the_window"])
    held = [fresh.reserve(Resource.GRAPHQL) for _ in range(4)]
    assert isinstance(held[0], Reservation) and isinstance(held[1], Reservation)
    small = {"X-RateLimit-Limit": "12", "X-RateLimit-Reset": str(int(time.time()) + 60)}
    assert fresh.record(held[0], {**small, "X-RateLimit-Remaining": "11"}) == 8
    assert fresh.record(held[1], {**small, "X-RateLimit-Remaining": "10"}) == 8  # already off
    # A secondary limit's pause is bounded by github.max_rate_wait_s.
    assert broker.pause(first, "900", max_s=5).length_s == 5
    # Redis gone: the same rules on the process's own state; nothing fails.
    port = free_port()
    lost = QuotaBroker(redis.Redis(port=port, socket_connect_timeout=1), [TOKEN])
    got = lost.reserve(Resource.GRAPHQL, 2)
    assert isinstance(got, Reservation) and got.remaining == 4998
    assert lost.record(got, {"X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset": str(int(time.time()) + 30)}) == 0
    spent = lost.reserve(Resource.GRAPHQL)
    assert isinstance(spent, Wait) and spent.reason is WaitReason.SPENT
    with pytest.raises(RateLimited, match="the token exhausted until"):
        lost.acquire(Resource.GRAPHQL, 1, threading.Event(), 60, time.monotonic() + 1)
