"""A user whose events only moved refs is synced without listing (issue 22 phase 2, the
worker's side: run/worker.py `_fill`, backup/archived_listing.py, UserBackup's CHANGED
listings, completion SYNCED_REFS, the user's history). The in-process worker of
test_worker_inprocess.py, a real redis-server, the GitHub stand-in over HTTP, real git; the
marks as `bulkbackup events` writes them (the whole path with real processes:
test_events_run.py)."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import chains, layout
from bulkbackup.config import StoreSettings
from bulkbackup.queue import events as queue_events
from bulkbackup.queue import history, keys
from bulkbackup.queue.connection import Scripts
from bulkbackup.run.reports import Synced
from bulkbackup.store import Store
from bulkbackup.store.local import LocalStore
from bulkbackup.store.memory import MemoryStore
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import completed, nothing_held, worker_of

Settings = Callable[..., config.Settings]


@pytest.fixture
def cfg(clean_env: None, redis_url: str, forge: Forge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for an in-process worker (as test_worker_inprocess.py's): the stand-in's
    API, the test's Redis, `api` as asked."""
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    monkeypatch.setenv("BULKBACKUP_STORE", str(tmp_path / "backup" / "github.com"))

    def make(api: str = "rest") -> config.Settings:
        path = tmp_path / f"worker-{api}.yaml"
        path.write_text("run:\n  lock_ttl_s: 5\n  claim_target_s: 1.0\n"
                        f"  work_dir: {tmp_path / 'work'}\n"
                        "github:\n  backoff_s: 0.05\n  api: " + api + "\n")
        return config.load(path)

    return make


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = (MemoryStore() if request.param == "memory"
                else LocalStore(StoreSettings(url=str(tmp_path / "given-store"))))
    yield s
    s.close()


def track(r: redis.Redis, *logins: str) -> None:
    """Never synced, and `tracked` marked intact (as the run's parent does at its start)."""
    r.zadd(keys.TRACKED, {keys.member(x): -math.inf for x in logins})
    r.set(keys.INTACT, int(time.time()))


def first_pass(cfg: Settings, r: redis.Redis, store: Store, api: str, *logins: str) -> None:
    """Every login synced in full once (a listing: the score is its time)."""
    track(r, *logins)
    w = worker_of(cfg(api), store)
    assert sorted(x.login for x in w.run() if isinstance(x, Synced)) == sorted(logins)
    w.close()


def events_read(r: redis.Redis) -> None:
    """As once `bulkbackup events` has read an hour: only due users are claimed."""
    r.hset(keys.EVENTS_STATUS, mapping={"last_hour": "2026-01-01-0"})


def mark(r: redis.Redis, login: str, repo: str, listing: bool = False) -> None:
    """A mark as `bulkbackup events` writes it, of an hour that has ended."""
    marks = queue_events.DueMarks(r, Scripts(r), track_new=False)
    marks.score_s = time.time() - 10
    marks.add(login, repo, needs_listing=listing)
    marks.flush()


def graphql_requests(forge: Forge) -> int:
    return forge_graphql.controls(forge).counters["requests"]


@pytest.mark.parametrize("api", ["rest", "graphql"])
def test_a_user_whose_events_only_moved_refs_is_synced_with_no_api_request(
    cfg: Settings, r: redis.Redis, forge: Forge, store: Store, api: str
) -> None:
    forge.add_users({"alice": [RepoSpec("r1"), RepoSpec("r2")]})
    first_pass(cfg, r, store, api, "alice")
    score = r.zscore(keys.TRACKED, keys.member("alice"))
    user = store.head(layout.user_key("alice"))
    assert user is not None and score is not None and score < math.inf
    events_read(r)
    forge.push("alice", "r1", {"new.txt": b"pushed\n"})
    mark(r, "alice", "r1")
    forge.reset_counters()
    requests = graphql_requests(forge)

    w = worker_of(cfg(api), store)
    reports = w.run()
    w.close()
    assert [(x.login, x.archived) for x in reports if isinstance(x, Synced)] == [("alice", 1)]
    assert forge.owner_requests("alice") == 0
    assert forge.counters["api"] == 0 and graphql_requests(forge) == requests
    assert forge.clones("alice", "r1") == 1 and forge.clones("alice", "r2") == 0
    # An increment on the archived chain, keeping the stored times.
    bundle = store.head(layout.bundle_key("alice", "r1"))
    assert bundle is not None and chains.committed(bundle) == 1
    # The score and the user's object stay those of its last full listing.
    assert r.zscore(keys.TRACKED, keys.member("alice")) == score
    after = store.head(layout.user_key("alice"))
    assert after is not None and after.get("LastSync") == user.get("LastSync")
    assert after.metadata == user.metadata
    # Its marks are dropped; its history has both syncs, the newest first.
    assert not r.exists(keys.events_refs("alice"))
    assert r.zscore(keys.EVENTS_DUE, keys.member("alice")) is None
    entries = history.read(r, "alice")
    assert [(e.repos_changed, e.errors) for e in entries] == [(1, 0), (2, 0)]
    assert entries[0].nbytes > 0 and nothing_held(r)


def test_users_whose_events_need_a_listing_are_listed(
    cfg: Settings, r: redis.Redis, forge: Forge, store: Store
) -> None:
    """`bob`: refs moved in a repository it has no archive of (GitHub's events missed its
    creation); `carol`: its stored object is damaged; `dave`: a new repository (a
    CreateEvent of a repository); each is listed and synced in full. `erin`: no events, a
    recent full listing: nothing at all."""
    logins = ["bob", "carol", "dave", "erin"]
    forge.add_users({x: [RepoSpec("a")] for x in logins})
    first_pass(cfg, r, store, "rest", *logins)
    erin = r.zscore(keys.TRACKED, keys.member("erin"))
    events_read(r)
    forge.add_user("bob", [RepoSpec("late")])
    forge.push("bob", "late", {"x": b"x\n"})
    mark(r, "bob", "late")
    forge.push("carol", "a", {"c": b"c\n"})
    store.put_bytes(layout.user_key("carol"), b"[not json", {"LastSync": "x"})
    mark(r, "carol", "a")
    forge.add_user("dave", [RepoSpec("fresh")])
    mark(r, "dave", "fresh", listing=True)
    forge.reset_counters()
    since = math.floor(time.time())

    w = worker_of(cfg("rest"), store)
    reports = w.run()
    w.close()
    assert sorted(x.login for x in reports if isinstance(x, Synced)) == ["bob", "carol", "dave"]
    for login in ("bob", "carol", "dave"):  # its page, and its gist list (run.gists)
        assert forge.owner_requests(login) == 2, login
    assert completed(r, ["bob", "carol", "dave"], since)  # listed in full: score := now
    for login, name in (("bob", "late"), ("carol", "a"), ("dave", "fresh")):
        bundle = store.head(layout.bundle_key(login, name))
        assert bundle is not None and bundle.size > 0, (login, name)
    assert forge.owner_requests("erin") == 0 and forge.clones("erin", "a") == 0
    assert r.zscore(keys.TRACKED, keys.member("erin")) == erin
    assert len(history.read(r, "erin")) == 1 and nothing_held(r)


@pytest.mark.parametrize("api", ["rest", "graphql"])
def test_once_events_are_read_a_user_without_events_costs_nothing(
    cfg: Settings, r: redis.Redis, forge: Forge, store: Store, api: str
) -> None:
    forge.add_users({"quiet": [RepoSpec("a"), RepoSpec("b")]})
    first_pass(cfg, r, store, api, "quiet")
    events_read(r)
    forge.reset_counters()
    requests, store_requests = graphql_requests(forge), store.request_count

    w = worker_of(cfg(api), store)
    assert w.run() == []
    w.close()
    assert not forge.counters and graphql_requests(forge) == requests
    assert forge.owner_requests("quiet") == 0
    assert store.request_count == store_requests


def test_a_failure_without_a_listing_is_recorded_on_the_repository_alone(
    cfg: Settings, r: redis.Redis, forge: Forge, store: Store
) -> None:
    """The moved repository cannot be fetched (gone from the forge): its archive keeps its
    data and gets the Error; the user's object, its cached counts and its score stay as its
    last full listing left them; the history has the failure."""
    forge.add_users({"alice": [RepoSpec("r1"), RepoSpec("r2")]})
    first_pass(cfg, r, store, "rest", "alice")
    score = r.zscore(keys.TRACKED, keys.member("alice"))
    user = store.head(layout.user_key("alice"))
    summary = r.hget(keys.SYNCD, "alice")
    events_read(r)
    shutil.rmtree(forge.git_root / "alice" / "r1.git")
    mark(r, "alice", "r1")
    forge.reset_counters()

    w = worker_of(cfg("rest"), store)
    reports = w.run()
    w.close()
    assert [(x.login, x.archived, x.error) for x in reports if isinstance(x, Synced)] == [
        ("alice", 0, True)]
    assert forge.owner_requests("alice") == 0
    bundle = store.head(layout.bundle_key("alice", "r1"))
    assert bundle is not None and bundle.size > 0 and bundle.get("Error")
    after = store.head(layout.user_key("alice"))
    assert user is not None and after is not None and after.metadata == user.metadata
    assert r.hget(keys.SYNCD, "alice") == summary
    assert r.zscore(keys.TRACKED, keys.member("alice")) == score
    newest = history.read(r, "alice")[0]
    assert (newest.repos_changed, newest.errors) == (0, 1) and "r1" in newest.error
    assert nothing_held(r)
