"""A hostile GitHub API: absurd times, endless pagination, slow, huge and rate-limited answers.

Real parts: the `bulkbackup` command line in a child process, the GitHub stand-in serving the
hostile answers over HTTP, real git, both stores (`sync`) and a real redis-server (`run`).
Each case used to hang (the test's timeout), freeze a repository or read a body whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from bulkbackup.archive.metadata import canonical
from bulkbackup.archive.stored import latest_archive
from bulkbackup.store import Store
from bulkbackup.testing.forge import BASE_TIME, Forge, RepoSpec, rfc3339
from tests.helpers import ROOT, run_cli


@pytest.fixture(autouse=True)
def rest_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """These cases test the REST client (github.api: rest); GraphQL's are in test_graphql.py
    and test_run_graphql.py."""
    monkeypatch.setenv("GITHUB_API", "rest")


# Every case must end well within this (the hostile answers would last minutes or forever).
END_S = 90


def sync(login: str, cfg: str = "") -> subprocess.CompletedProcess[str]:
    extra = {}
    if cfg:
        fd, name = tempfile.mkstemp(suffix=".yaml")
        with open(fd, "w") as f:
            f.write(cfg)
        extra["BULKBACKUP_CONFIG"] = name
    return run_cli("sync", login, env=extra, timeout=END_S)


def bundle_heads(store: Store, key: str, tmp_path: Path) -> str:
    path = tmp_path / "check.bundle"
    path.write_bytes(store.read_bytes(key))
    repo = tmp_path / "check-repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return subprocess.run(["git", "bundle", "list-heads", str(path)], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


# -- item 4: times ---------------------------------------------------------------------------

@pytest.mark.parametrize("absurd", ["9999-12-31T23:59:59Z", "9999-99-99T00:00:00Z"])
def test_a_far_future_pushed_at_does_not_freeze_a_repository(
    env: None, forge: Forge, store: Store, tmp_path: Path, absurd: str
) -> None:
    forge.add_user("future", [RepoSpec("a")])
    with forge.lock:
        entry = forge.users["future"][0]
        entry["pushed_at"] = entry["updated_at"] = absurd
    proc = sync("future")
    assert proc.returncode == 0, proc.stderr
    first = store.head("future/a.bundle")
    assert first is not None and first.size > 0
    # Not a real time: not stored (it could only ever look newer than any later push).
    assert (first.get("PushedAt"), first.get("UpdatedAt")) == ("", "")

    # A value an older version stored must not block the repository either.
    meta = canonical(first.metadata)
    meta["PushedAt"] = meta["UpdatedAt"] = absurd
    store.replace_metadata("future/a.bundle", meta)
    # A real push, with real times.
    with forge.lock:
        entry["pushed_at"] = entry["updated_at"] = rfc3339(BASE_TIME)
    forge.push("future", "a", {"new.txt": b"new\n"})
    real = entry["pushed_at"]
    proc = sync("future")
    assert proc.returncode == 0, proc.stderr
    second = store.head("future/a.bundle")
    assert second is not None and second.get("PushedAt") == real  # the new archive landed
    source = forge.root / "git" / "future" / "a.git"
    tip = subprocess.run(["git", "rev-parse", "refs/heads/main"], cwd=source, check=True,
                         capture_output=True, text=True).stdout.strip()
    newest = latest_archive(store, "future", "a").parts[-1].key  # the increment
    assert newest != "future/a.bundle"
    assert f"{tip} refs/heads/main" in bundle_heads(store, newest, tmp_path)

    # Real times again: the repository is seen unchanged, as any other.
    forge.reset_counters()
    assert sync("future").returncode == 0
    assert forge.clones("future", "a") == 0


# -- item 5: pagination and the user's deadline ----------------------------------------------

def test_a_next_link_to_the_same_page_is_refused(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("loop", [RepoSpec("a")])
    forge.api_next_loop = True
    proc = sync("loop")
    assert proc.returncode == 0  # recorded on the user: a result
    user = store.head("loop")
    assert user is not None and "pagination loops" in user.get("Error")
    assert forge.counters["api_200"] == 1  # the repeated URL is not fetched again
    assert forge.counters["info_refs"] == 0  # nothing cloned from a listing that never ended


def test_endless_pages_stop_at_github_max_pages(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("endless", [RepoSpec("a")])
    forge.api_endless = True
    proc = sync("endless", "github:\n  max_pages: 7\n")
    assert proc.returncode == 0  # recorded on the user: a result
    user = store.head("endless")
    assert user is not None and "more than 7 pages (github.max_pages)" in user.get("Error")
    assert forge.counters["api_200"] == 7
    assert forge.counters["info_refs"] == 0


def test_endless_pages_stop_at_the_users_deadline(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("slowpoke", [RepoSpec("a")])
    forge.api_endless = True
    proc = sync("slowpoke", "github:\n  max_pages: 100000000\n  user_deadline_s: 2\n")
    assert proc.returncode == 0  # recorded on the user: a result
    user = store.head("slowpoke")
    assert user is not None
    assert "listing took longer than github.user_deadline_s (2s)" in user.get("Error")
    assert forge.counters["info_refs"] == 0


# -- item 6: each answer within timeout_s; rate-limit times bounded --------------------------

@pytest.mark.parametrize("head", [False, True], ids=["body", "headers"])
def test_a_dripping_answer_is_cut_at_github_timeout_s(
    env: None, forge: Forge, store: Store, head: bool
) -> None:
    forge.add_user("drip", [RepoSpec("a")])  # a body of ~1.5 KB: ~5 minutes at this pace
    forge.api_drip_s = 0.2
    forge.api_drip_head = head  # the status line and headers drip too: ~2 more minutes
    proc = sync("drip", "github:\n  timeout_s: 1\n  max_retries: 1\n  backoff_s: 0.01\n")
    assert proc.returncode == 0  # recorded on the user: a result
    user = store.head("drip")
    assert user is not None
    assert "GitHub API too slow: no whole answer within 1s" in user.get("Error")
    assert forge.counters["api_200"] == 2  # the first try and one retry


@pytest.mark.parametrize("switch,value", [
    ("api_retry_after", "inf"), ("api_retry_after", "nan"), ("api_retry_after", "-5"),
    ("api_retry_after", "1e300"), ("api_reset", "99999999999"), ("api_reset", "inf"),
    ("api_reset", "1000000000"),  # already past: paused (QuotaBroker.hold), never a tight loop
])
def test_an_endless_rate_limit_gives_the_user_back_unfailed(
    env: None, forge: Forge, store: Store, switch: str, value: str
) -> None:
    forge.add_user("limited", [RepoSpec("a")])
    setattr(forge, switch, value)
    proc = sync("limited", "github:\n  user_deadline_s: 3\n")
    assert proc.returncode == 1
    assert "GitHub rate limit: the token exhausted until" in proc.stdout
    assert "limited: not synced: " in proc.stdout
    assert "past this user's deadline (github.user_deadline_s)" in proc.stdout
    assert "1 not synced" in proc.stderr
    # A rate limit never marks a user failed: nothing is recorded for it.
    assert store.head("limited") is None


def test_run_gives_rate_limited_users_back_and_ends(
    clean_env: None, redis_url: str, tmp_path: Path, forge: Forge
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    forge.add_user("first", [RepoSpec("a")])
    forge.add_user("second", [RepoSpec("a")])
    r.zadd("tracked", {"github.com/first": float("-inf"), "github.com/second": float("-inf")})
    forge.api_retry_after = "inf"
    cfg = tmp_path / "run.yaml"
    # Each wait for the limit to lift is at most max_rate_wait_s (made short here).
    cfg.write_text("run:\n  lock_ttl_s: 2\n  max_attempts: 2\n"
                   "github:\n  user_deadline_s: 1\n  max_rate_wait_s: 2\n")
    store_dir = tmp_path / "backup" / "github.com"
    env = {**os.environ, "BULKBACKUP_CONFIG": str(cfg), "GITHUB_API_URL": forge.url,
           "BULKBACKUP_STORE": str(store_dir), "BULKBACKUP_WORKER_HOST": "hostA"}
    proc = subprocess.run([sys.executable, "-m", "bulkbackup", "run", "--procs", "1"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=END_S)
    assert proc.returncode == 1, proc.stderr
    assert "2 left for the next run" in proc.stderr
    assert "rate limit" in proc.stderr
    # Not failed: no Error recorded, still never synced, due again in the next run.
    assert not (store_dir / "first").exists() and not (store_dir / "second").exists()
    assert r.zscore("tracked", "github.com/first") == float("-inf")
    r.close()


# -- item 7: size of an answer ---------------------------------------------------------------

@pytest.mark.parametrize("unsized", [False, True], ids=["sized", "unsized"])
def test_a_huge_answer_is_refused_at_github_max_response_mb(
    env: None, forge: Forge, store: Store, unsized: bool
) -> None:
    forge.add_user("huge", [RepoSpec("a")])
    forge.api_pad_mb = 20  # valid JSON: the array padded with 20 MB of spaces
    forge.api_pad_unsized = unsized  # no Content-Length: refused while reading, not before
    proc = sync("huge", "github:\n  max_response_mb: 1\n")
    assert proc.returncode == 0  # recorded on the user: a result
    user = store.head("huge")
    assert user is not None
    assert "GitHub API answer larger than github.max_response_mb (1 MB)" in user.get("Error")
    assert store.read_bytes("huge") == b"[]"  # the answer is not stored
    assert forge.counters["info_refs"] == 0


# -- the settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("setting", [
    "page_size: 0", "page_size: 101", "max_pages: 0", "max_response_mb: 0", "max_listing_mb: 0",
    "user_deadline_s: 0", "user_deadline_s: .inf",
])
def test_bounds_out_of_range_are_configuration_errors(clean_env: None, setting: str) -> None:
    proc = sync("anyone", f"github:\n  {setting}\n")
    assert proc.returncode == 2
    name = setting.split(":")[0]
    assert proc.stderr.count("\n") == 1 and f"github.{name}" in proc.stderr


def test_a_listing_larger_than_github_max_listing_mb_is_refused(
    env: None, forge: Forge, store: Store
) -> None:
    forge.add_user("heavy", [RepoSpec("a")])
    forge.api_endless = True
    forge.api_pad_mb = 1  # pages of 1 MB each, never ending
    proc = sync("heavy", "github:\n  max_response_mb: 2\n  max_listing_mb: 5\n")
    assert proc.returncode == 0  # recorded on the user: a result
    user = store.head("heavy")
    assert user is not None
    assert "listing larger than github.max_listing_mb (5 MB)" in user.get("Error")
    assert forge.counters["api_200"] == 5  # the fifth page passes 5 MB
    assert store.read_bytes("heavy") == b"[]"
