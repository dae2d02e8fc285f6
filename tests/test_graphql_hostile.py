"""A hostile GitHub GraphQL API and refused tokens (issue 19, items 4-6), with real parts: the
`bulkbackup` command (`run --procs 1`, `sync`) in child processes, the GitHub stand-in's
GraphQL (and REST) over HTTP, a real redis-server, the local store.

Every bound is checked by counting what the stand-in received, never by timing.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bulkbackup.config import StoreSettings
from bulkbackup.queue import keys
from bulkbackup.store import open_store
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.forge_graphql_data import Endless
from tests.helpers import ROOT, track

TOKENS = ["ghp_hostileGOODone0123456789", "ghp_hostileREVOKEDtwo0123456789",
          "ghp_hostileGOODthree0123456789"]
END_S = 240  # every case ends well within this (before the fix some never ended)
USERS = ["alpha", "beta"]


def cli_env(tmp_path: Path, forge: Forge, redis_url: str, api: str = "graphql",
            github: str = "", run: str = "", tokens: str | None = TOKENS[0]
            ) -> dict[str, str]:
    cfg = tmp_path / "hostile.yaml"
    cfg.write_text("run:\n  lock_ttl_s: 2\n  grace_s: 20\n" + run +
                   "github:\n  backoff_s: 0.05\n" + github)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GITHUB_TOKEN", "GITHUB_TOKENS", "BULKBACKUP_DEBUG")}
    env.update({"BULKBACKUP_CONFIG": str(cfg), "GITHUB_API_URL": forge.url, "GITHUB_API": api,
                "BULKBACKUP_STORE": str(tmp_path / "store"), "REDIS_URL": redis_url,
                "BULKBACKUP_WORKER_HOST": "hostA"})
    if tokens is not None:
        env["GITHUB_TOKENS"] = tokens
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulkbackup", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=END_S)


def stored(tmp_path: Path) -> list[str]:
    store = tmp_path / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def user_error(tmp_path: Path, login: str) -> str:
    store = open_store(StoreSettings(url=str(tmp_path / "store")), create=False)
    try:
        head = store.head(login)
        assert head is not None, login
        return head.get("Error")
    finally:
        store.close()


def nothing_held(r: redis.Redis) -> bool:
    """No user claimed or locked (claims are parked in LEASES/CLAIMS while held)."""
    return not r.zcard(keys.LEASES) and not r.exists(keys.CLAIMS) and not r.keys("lock:*")


@pytest.fixture
def users(forge: Forge) -> Forge:
    forge.add_users({login: [RepoSpec("a")] for login in USERS})
    return forge


# -- item 4: a listing that never ends ------------------------------------------------------

@pytest.mark.parametrize("endless,pages,error", [
    (Endless.NEW_CURSORS, 5, "more than 5 pages (github.max_pages)"),
    (Endless.SAME_CURSOR, 2, "pagination loops"),
], ids=["new-cursors", "same-cursor"])
def test_endless_pages_fail_the_user_as_rest_does(
    clean_env: None, redis_url: str, r: redis.Redis, users: Forge, tmp_path: Path,
    endless: Endless, pages: int, error: str
) -> None:
    c = forge_graphql.controls(users)
    c.endless = endless
    track(r, "alpha")
    before = time.time()
    proc = cli(cli_env(tmp_path, users, redis_url, github="  max_pages: 5\n"),
               "run", "--procs", "1", "--no-stats")
    # As REST: a listing that passes a bound is the user's recorded Error (a result, exit 0);
    # the user completes, its score moves to now, its lock is released.
    assert proc.returncode == 0, proc.stderr
    assert "1 users synced" in proc.stderr and "1 users with errors" in proc.stderr
    assert error in user_error(tmp_path, "alpha")
    score = r.zscore(keys.TRACKED, keys.member("alpha"))
    assert score is not None and score >= math.floor(before)
    assert nothing_held(r)
    # Bounded by count: one query per page up to the bound (the token's proof is REST's
    # free /rate_limit).
    assert c.counters["requests"] == pages, c.counters
    assert users.counters["info_refs"] == 0  # nothing cloned from a listing that never ended


def test_endless_pages_stop_at_the_users_deadline(
    clean_env: None, redis_url: str, r: redis.Redis, users: Forge, tmp_path: Path
) -> None:
    forge_graphql.controls(users).endless = Endless.NEW_CURSORS
    track(r, "alpha")
    env = cli_env(tmp_path, users, redis_url,
                  github="  max_pages: 100000000\n  user_deadline_s: 2\n")
    proc = cli(env, "run", "--procs", "1", "--no-stats")
    assert proc.returncode == 0, proc.stderr
    assert "1 users with errors" in proc.stderr
    assert "listing took longer than github.user_deadline_s (2s)" in user_error(tmp_path, "alpha")
    assert nothing_held(r)
    assert r.zscore(keys.TRACKED, keys.member("alpha")) != float("-inf")


# -- item 5: a 403 whose reset is already past ----------------------------------------------

# The pause after such an answer (github.max_rate_wait_s caps it: the floor here) and the
# user's deadline; each attempt can send at most DEADLINE_S / FLOOR_S + 1 queries.
FLOOR_S, DEADLINE_S, ATTEMPTS = 1, 3, 2
LIMITS = (f"  max_rate_wait_s: {FLOOR_S}\n  user_deadline_s: {DEADLINE_S}\n")


def per_attempt() -> int:
    return DEADLINE_S // FLOOR_S + 1


def test_a_spent_limit_with_a_past_reset_pauses_run_with_the_broker(
    clean_env: None, redis_url: str, r: redis.Redis, users: Forge, tmp_path: Path
) -> None:
    c = forge_graphql.controls(users)
    c.spent_reset = str(int(time.time()) - 120)  # remaining 0, reset two minutes ago
    track(r, "alpha")
    env = cli_env(tmp_path, users, redis_url, github=LIMITS,
                  run=f"  max_attempts: {ATTEMPTS}\n")
    proc = cli(env, "run", "--procs", "1", "--no-stats")
    # A rate limit is never a user's failure: given back, then left for the next run.
    assert proc.returncode == 1, proc.stderr
    assert "1 left for the next run" in proc.stderr
    assert stored(tmp_path) == []
    assert r.zscore(keys.TRACKED, keys.member("alpha")) == float("-inf")
    # The proof, then per attempt at most one query per pause within the user's deadline
    # (before: a tight loop, about 20 queries a second).
    assert c.counters["status_403"] == c.counters["requests"]
    assert c.counters["requests"] <= 1 + ATTEMPTS * per_attempt(), c.counters
    assert keys.QUOTA_PREFIX + "pause:" in " ".join(r.keys(keys.QUOTA_PREFIX + "*"))


def test_a_spent_limit_with_a_past_reset_pauses_sync_without_the_broker(
    clean_env: None, redis_url: str, users: Forge, tmp_path: Path
) -> None:
    c = forge_graphql.controls(users)
    c.spent_reset = str(int(time.time()) - 120)
    env = cli_env(tmp_path, users, "redis://127.0.0.1:9/0", github=LIMITS)  # no Redis
    proc = cli(env, "sync", "alpha")
    assert proc.returncode == 1, proc.stderr
    assert "alpha: not synced: GitHub rate limit" in proc.stdout
    assert stored(tmp_path) == []
    assert 1 <= c.counters["requests"] <= per_attempt(), c.counters


# -- item 6: a token GitHub refuses ----------------------------------------------------------

def refuse_token_2(forge: Forge) -> None:
    """Only tokens 1 and 3 are known, on both APIs: token 2 is refused (401)."""
    forge.require_known_tokens = True
    for token in (TOKENS[0], TOKENS[2]):
        forge.set_token_budget(token, 5000, 3600)
        forge_graphql.controls(forge).set_token_budget(token, 5000, 3600)


def assert_refused_at_start(proc: subprocess.CompletedProcess[str], r: redis.Redis,
                            tmp_path: Path, line: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and line in proc.stderr, proc.stderr
    assert not any(t in proc.stdout + proc.stderr for t in TOKENS)
    assert stored(tmp_path) == []
    assert r.zrange(keys.TRACKED, 0, -1, withscores=True) == [
        (keys.member(x), float("-inf")) for x in sorted(USERS)]
    assert nothing_held(r) and not r.exists(keys.FAILURES) and not r.exists(keys.LAST_RUN)


@pytest.mark.parametrize("api", ["graphql", "rest"])
def test_run_proves_its_tokens_before_claiming_anyone(
    clean_env: None, redis_url: str, r: redis.Redis, users: Forge, tmp_path: Path, api: str
) -> None:
    refuse_token_2(users)
    track(r, *USERS)
    env = cli_env(tmp_path, users, redis_url, api=api, tokens=",".join(TOKENS))
    proc = cli(env, "run", "--procs", "1", "--no-stats")
    # Proved by REST's free /rate_limit, with GraphQL too (a GraphQL query costs a point).
    assert_refused_at_start(proc, r, tmp_path,
                            "GITHUB_TOKENS token 2 of 3 was refused by GitHub's REST API "
                            "(401: Bad credentials)")
    assert users.counters["api"] == 0  # no listing
    assert forge_graphql.controls(users).counters["requests"] == 0
    assert users.counters["rate_limit"] == 2  # the proof stops at the refused token


def test_graphql_without_a_token_is_a_configuration_error_at_start(
    clean_env: None, redis_url: str, r: redis.Redis, users: Forge, tmp_path: Path
) -> None:
    forge_graphql.controls(users).require_token = True  # as GitHub's GraphQL API
    track(r, *USERS)
    proc = cli(cli_env(tmp_path, users, redis_url, tokens=None), "run", "--procs", "1")
    assert_refused_at_start(proc, r, tmp_path, "GitHub's GraphQL API refused a request "
                            "without a token (401: This endpoint requires you to be "
                            "authenticated.): set GITHUB_TOKEN or GITHUB_TOKENS")


@pytest.mark.parametrize("api", ["graphql", "rest"])
def test_sync_with_a_refused_token_records_nothing_and_exits_2(
    clean_env: None, redis_url: str, users: Forge, tmp_path: Path, api: str
) -> None:
    refuse_token_2(users)
    env = cli_env(tmp_path, users, redis_url, api=api, tokens=TOKENS[1])
    proc = cli(env, "sync", *USERS)
    assert proc.returncode == 2, proc.stderr
    which = "GraphQL API" if api == "graphql" else "REST API"
    assert (f"GITHUB_TOKENS token 1 of 1 was refused by GitHub's {which} (401: Bad "
            "credentials)") in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert not any(t in proc.stdout + proc.stderr for t in TOKENS)
    assert stored(tmp_path) == []


def test_a_token_revoked_mid_run_gives_the_users_back_and_exits_2(
    clean_env: None, redis_url: str, r: redis.Redis, users: Forge, tmp_path: Path
) -> None:
    c = forge_graphql.controls(users)
    c.revoke_after = 0  # the proof (REST's /rate_limit) passes; every query is refused
    track(r, *USERS)
    proc = cli(cli_env(tmp_path, users, redis_url), "run", "--procs", "1", "--no-stats")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "bulkbackup: error: GITHUB_TOKENS token 1 of 1 was refused by GitHub's GraphQL API "
        "(401: Bad credentials)")
    assert TOKENS[0] not in proc.stdout + proc.stderr
    # Given back as they were: nothing recorded, scores unchanged, no attempt counted.
    assert stored(tmp_path) == []
    assert r.zrange(keys.TRACKED, 0, -1, withscores=True) == [
        (keys.member(x), float("-inf")) for x in sorted(USERS)]
    assert nothing_held(r) and not r.exists(keys.FAILURES)
    assert c.counters["status_401"] == c.counters["requests"] >= 1
