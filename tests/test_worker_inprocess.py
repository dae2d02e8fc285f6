"""The `run` worker in this process (arq's model): a `Worker` built from plain parts (settings,
the Redis of tests/conftest.py, a store, its lister) drains a few users and returns. Claims,
locks, completion and give-backs, with real parts (redis-server, the GitHub stand-in over HTTP,
real git; the local store or the in-memory one) and no fork server or parent process. The
end-to-end cases with real processes are in test_run.py, test_run_graphql.py, test_signals.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import layout
from bulkbackup.config import StoreSettings
from bulkbackup.forge.listing import OwnerListing
from bulkbackup.queue import keys
from bulkbackup.run.reports import Deferred, GivenBack, Lost, Report, Synced
from bulkbackup.run.worker import Worker
from bulkbackup.store import Store
from bulkbackup.store.local import LocalStore
from bulkbackup.store.memory import MemoryStore
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import completed, hooked, nothing_held, worker_of


@pytest.fixture
def cfg(clean_env: None, redis_url: str, forge: Forge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., config.Settings]:
    """Settings for an in-process worker: the stand-in's API, the test's Redis, a local
    store under tmp_path; `api` and extra YAML lines as asked."""
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    monkeypatch.setenv("BULKBACKUP_STORE", str(tmp_path / "backup" / "github.com"))

    def make(api: str = "rest", run: str = "", github: str = "") -> config.Settings:
        path = tmp_path / f"worker-{api}.yaml"
        path.write_text("run:\n  lock_ttl_s: 5\n  claim_target_s: 1.0\n"
                        f"  work_dir: {tmp_path / 'work'}\n" + run +
                        "github:\n  backoff_s: 0.05\n  api: " + api + "\n" + github)
        return config.load(path)

    return make


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        s = LocalStore(StoreSettings(url=str(tmp_path / "given-store")))
    yield s
    s.close()


def track(r: redis.Redis, *logins: str, score: float = -math.inf) -> None:
    """Due users, and `tracked` marked intact as the run's parent marks it at its start (a
    worker does not end while the mark is missing: see Worker._drained)."""
    r.zadd(keys.TRACKED, {keys.member(x): score for x in logins})
    r.set(keys.INTACT, int(time.time()))


@pytest.mark.parametrize("api", ["rest", "graphql"])
def test_a_worker_in_process_drains_tracked_and_returns(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, store: Store, api: str
) -> None:
    logins = [f"user{i}" for i in range(6)]
    forge.add_users({x: [RepoSpec(f"r{j}") for j in range(i % 3)]
                     for i, x in enumerate(logins)})
    track(r, *logins)
    since = math.floor(time.time())
    w = worker_of(cfg(api), store)
    reports = w.run()
    w.close()
    assert sorted(x.login for x in reports if isinstance(x, Synced)) == logins
    assert len(reports) == len(logins)  # nothing lost, nothing given back
    assert completed(r, logins, since) and nothing_held(r)
    assert forge.counters["info_refs"] == sum(i % 3 for i in range(6))  # one clone a repo
    for i, login in enumerate(logins):
        head = store.head(layout.user_key(login))
        assert head is not None and head.get("SyncdRepos") == str(i % 3)
    # The second pass clones nothing: every repository matches its stored times.
    forge.reset_counters()
    track(r, *logins)
    w = worker_of(cfg(api), store)
    assert len(w.run()) == len(logins)
    w.close()
    assert forge.counters["info_refs"] == 0 and nothing_held(r)


def test_the_max_users_budget_is_shared_and_never_passed(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, store: Store
) -> None:
    logins = [f"m{i}" for i in range(7)]
    forge.add_users({x: [] for x in logins})
    track(r, *logins)
    w = worker_of(cfg(), store, budget=3)
    reports = w.run()
    w.close()
    assert len([x for x in reports if isinstance(x, Synced)]) == 3
    assert r.zcount(keys.TRACKED, "-inf", "-inf") == 4 and nothing_held(r)


@pytest.mark.parametrize("api", ["rest", "graphql"])
def test_two_workers_share_the_queue_without_doing_a_user_twice(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, api: str
) -> None:
    logins = [f"s{i:02d}" for i in range(16)]
    forge.add_users({x: [RepoSpec("only")] for x in logins})
    track(r, *logins)
    since = math.floor(time.time())
    shared = MemoryStore()  # one store, two workers, as two hosts share a bucket
    workers = [worker_of(cfg(api, run="  claim_batch_max: 2\n"), shared, index=i)
               for i in range(2)]
    threads = [threading.Thread(target=w.worker.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    done = [[x.login for x in w.reports() if isinstance(x, Synced)] for w in workers]
    for w in workers:
        w.close()
    assert sorted(done[0] + done[1]) == logins
    assert all(forge.clones(x, "only") == 1 for x in logins)  # each user exactly once
    assert completed(r, logins, since) and nothing_held(r)


@pytest.mark.parametrize("api", ["rest", "graphql"])
def test_a_user_whose_lock_is_taken_after_its_listing_is_lost_and_writes_nothing(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, store: Store, api: str
) -> None:
    """Between the listing and the sync the lock passes to another worker (it expired and
    was claimed): the sync writes nothing and the user is reported lost; the others go on.
    (The other's claim is a bare lock here: its lease and completion are test_claims.py's.
    No listing handed over: the lock lost at a hand-over is test_listing_share.py's.)"""
    forge.add_users({"taken": [RepoSpec("a")], "kept": [RepoSpec("a")]})
    track(r, "taken", "kept")
    since = math.floor(time.time())
    member = keys.member("taken")
    stolen: list[bool] = []

    def steal(_worker: Worker, done: list[OwnerListing] | None) -> None:
        if done and not stolen and any(x.login == "taken" for x in done):
            stolen.append(True)
            r.set(keys.lock(member), "2.0.elsewhere", ex=2)

    w = worker_of(cfg(api, run="  listing_cache_s: 0\n"), store, hooked(steal))
    thread = threading.Thread(target=w.run)
    thread.start()
    seen: list[Report] = []
    while Lost(0, "taken") not in seen:
        assert w.reader.poll(60), seen
        seen.append(w.reader.recv())
    # Read as the loss is reported: the lost sync wrote nothing (no object, no archive).
    assert store.head(layout.user_key("taken")) is None
    assert not list(store.list(layout.user_prefix("taken")))
    thread.join(120)
    assert not thread.is_alive()
    reports = seen + w.reports()
    w.close()
    assert "kept" in [x.login for x in reports if isinstance(x, Synced)]
    assert completed(r, ["kept"], since)


@pytest.mark.parametrize("api", ["rest", "graphql"])
def test_a_stop_gives_back_every_user_not_started(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, store: Store, api: str
) -> None:
    """The parent's graceful stop (its flag) after the first listing: the users listed or
    claimed and not started are given back with their old score, none is lost or failed."""
    logins = [f"g{i}" for i in range(5)]
    forge.add_users({x: [] for x in logins})
    for i, login in enumerate(logins):
        track(r, login, score=10.0 + i)

    def stop(worker: Worker, done: list[OwnerListing] | None) -> None:
        if done is not None:
            worker.stop.set()

    w = worker_of(cfg(api, run="  claim_batch_max: 5\n"), store, hooked(stop))
    reports = w.run()
    w.close()
    back = [x.login for x in reports if isinstance(x, GivenBack)]
    assert back and not [x for x in reports if not isinstance(x, GivenBack | Synced)]
    assert len(back) + len([x for x in reports if isinstance(x, Synced)]) <= len(logins)
    for login in back:
        assert r.zscore(keys.TRACKED, keys.member(login)) == 10.0 + logins.index(login)
    assert nothing_held(r) and r.hlen(keys.FAILURES) == 0


@pytest.mark.parametrize(("api", "charged"), [("rest", 1), ("graphql", 2)])
def test_a_rate_limit_past_the_deadline_gives_users_back_charging_the_stopped_ones(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, store: Store, api: str,
    charged: int
) -> None:
    """Every answer is a secondary limit: the listing under way passes its deadline. REST
    charges an attempt to the user it was listing and gives the other back as it was;
    GraphQL to every user of its stream. No user is recorded as failed, nothing is written.
    (A stop as they are taken back keeps the case short: the wait for quota that follows
    ends the worker.)"""
    forge.add_users({"first": [RepoSpec("a")], "second": [RepoSpec("a")]})
    track(r, "first", "second")
    if api == "rest":
        forge.api_retry_after = "inf"
    else:
        forge_graphql.controls(forge).secondary = 1000  # 403, Retry-After: 60
    limits = "  user_deadline_s: 1\n  max_rate_wait_s: 1\n"

    def stop(worker: Worker, done: list[OwnerListing] | None) -> None:
        if done is None:
            worker.stop.set()

    w = worker_of(cfg(api, run="  max_attempts: 3\n", github=limits), store, hooked(stop))
    reports = w.run()
    w.close()
    assert sorted(x.login for x in reports if isinstance(x, GivenBack)) == ["first", "second"]
    assert not [x for x in reports if isinstance(x, Deferred | Synced | Lost)]
    assert r.hlen(keys.FAILURES) == charged
    assert r.hget(keys.FAILURES, keys.member("first")) == "1"
    assert r.zcount(keys.TRACKED, "-inf", "-inf") == 2 and nothing_held(r)
    assert not list(store.list(""))


def test_a_user_failing_on_the_store_is_given_back_then_deferred(
    cfg: Callable[..., config.Settings], r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    """Every store write of `poison` fails (a file where its folder belongs): given back with
    a failure each time, left for the next run at run.max_attempts; `fine` completes."""
    root = tmp_path / "poisoned"
    root.mkdir()
    (root / "poison").write_text("not a folder\n")
    local = LocalStore(StoreSettings(url=str(root)))
    forge.add_users({"poison": [], "fine": []})
    track(r, "poison", "fine")
    w = worker_of(cfg(run="  max_attempts: 2\n"), local)
    reports = w.run()
    w.close()
    local.close()
    assert reports.count(GivenBack(0, "poison")) == 1 and Deferred(0, "poison") in reports
    assert [x.login for x in reports if isinstance(x, Synced)] == ["fine"]
    assert r.zscore(keys.TRACKED, keys.member("poison")) == -math.inf  # never synced
    deferred = r.keys(keys.DEFERRED_PREFIX + "*")
    assert len(deferred) == 1 and r.smembers(deferred[0]) == {keys.member("poison")}
    assert r.hlen(keys.FAILURES) == 0 and nothing_held(r)
