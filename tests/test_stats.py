"""`bulkbackup stats` and `rebuild` over stores built by the sync job (both backends)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from bulkbackup import config
from bulkbackup.archive.layout import UserCounts
from bulkbackup.archive.metadata import canonical
from bulkbackup.store import Store, open_store
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.timeutil import parse_rfc3339
from tests.helpers import remove_object, run_cli


@pytest.fixture
def store(
    clean_env: None, redis_url: str, store_url: str, forge: Forge,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    s = open_store(config.load().store)
    yield s
    s.close()


Snapshot = dict[str, tuple[bytes, dict[str, str]]]


@pytest.fixture(scope="module")
def built() -> dict[str, Snapshot]:
    """What build()'s sync stored, per backend: made by the first case of the module (in this
    test process) that needs it, copied into the store of the next ones."""
    return {}


def build(forge: Forge, store: Store, built: dict[str, Snapshot] | None = None) -> None:
    """octocat: 2 good, 1 empty, 1 failed; alice: 1 good; bob: nothing; ghost: 404. A real
    `sync` stores them once per backend; later cases get a copy, object by object with its
    metadata (the stats pass reads only the store, and `sync` writes nothing to Redis), but
    with new times (``built`` None: a case that reads them gets its own sync)."""
    backend = type(store).__name__
    if built is not None and backend in built:
        for key, (data, metadata) in built[backend].items():
            store.put_bytes(key, data, metadata)
        return
    forge.add_user("octocat", [RepoSpec("a"), RepoSpec("b"), RepoSpec("e", empty=True),
                               RepoSpec("f", missing=True)])
    forge.add_user("alice", [RepoSpec("only")])
    forge.add_user("bob", [])
    # alice and alice-x interleave in byte order with alice's own keys (`-` < `/`).
    forge.add_user("alice-x", [RepoSpec("z")])
    run_cli("sync", "octocat", "alice", "bob", "alice-x", "ghost")
    if built is None:
        return
    snapshot: Snapshot = {}
    for info in store.list():
        head = store.head(info.key)
        assert head is not None
        snapshot[info.key] = (store.read_bytes(info.key), canonical(head.metadata))
    built[backend] = snapshot


def stats(*args: str) -> dict[str, dict[str, object]]:
    proc = run_cli("stats", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)  # type: ignore[no-any-return]


def test_counts_match_what_the_sync_job_stored(
        store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]) -> None:
    build(forge, store, built)
    r.zadd("tracked", {"github.com/octocat": 1, "github.com/newbie": -math.inf})
    report = stats()
    assert report["repositories"] == {"archived": 4, "failed": 1, "empty": 1}
    users = report["users"]
    assert users["in_store"] == 5
    assert users["with_errors"] == 2  # octocat (one repo failed) and ghost (404)
    assert users["tracked"] == 2 and users["never_synced"] == 1
    size = sum(i.size for i in store.list("") if i.key.endswith(".bundle"))
    zips = sum(i.size for i in store.list("") if i.key.endswith(".zip"))
    assert report["bytes"] == {"bundles": size, "zips": zips, "increments": 0}
    assert set(report) == {"users", "repositories", "bytes", "more_than_git", "last_run",
                           "verify", "events", "pass"}
    assert report["more_than_git"] == {"wikis": 0, "gists": 0, "lfs_objects": 0, "lfs_bytes": 0,
                                       "release_lists": 0, "assets": 0, "asset_bytes": 0}
    assert set(report["last_run"]) == {"ended_at", "users", "users_per_s"}
    assert report["events"]["last_hour"] is None and report["events"]["lag_s"] is None


def test_syncd_repos_written_only_where_it_changed(
        store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]) -> None:
    build(forge, store, built)
    first = stats()
    assert first["pass"]["syncd_repos_written"] == 0  # the sync job wrote the right values
    remove_object(store, "octocat/a.bundle")  # the store changed behind our back
    second = stats()
    assert second["pass"]["syncd_repos_written"] == 1
    head = store.head("octocat")
    assert head is not None and head.get("SyncdRepos") == "1"
    with store.open("octocat") as f:
        assert f.read().startswith(b"[")  # data untouched
    third = stats()
    assert third["pass"]["syncd_repos_written"] == 0
    # A warm cache: the pass costs listing pages only, not a request per user.
    assert third["pass"]["store_requests"] <= 3


def summary(r: redis.Redis, login: str) -> UserCounts | None:
    text = r.hget("bulkbackup:syncd", login)
    return UserCounts.decode(None if text is None else str(text))


def test_the_pass_caches_the_errors_reasons_for_the_users_list(
        store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]) -> None:
    build(forge, store, built)  # `sync`: no Redis, so no summaries yet
    stats()
    octocat = summary(r, "octocat")
    assert octocat is not None and octocat.reason is not None
    assert octocat.reason.startswith("1 of 4 repositories failed: f")
    ghost = summary(r, "ghost")
    assert ghost is not None and str(ghost.reason).startswith("user ghost not found on GitHub (")
    alice = summary(r, "alice")
    assert alice is not None and (alice.error, alice.reason) == (False, None)
    warm = stats()["pass"]["store_requests"]
    # An older version's summary (no reason) agrees with the listing; it is still rebuilt,
    # at one HEAD (its object's; the split of its zero-byte bundles is kept).
    r.hset("bulkbackup:syncd", "octocat", "2 1 1 1 4")
    assert stats()["pass"]["store_requests"] == warm + 1  # type: ignore[operator]
    assert r.hget("bulkbackup:syncd", "octocat") == octocat.encode()
    assert stats()["pass"]["store_requests"] == warm


def test_no_write_reports_only(
        store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]) -> None:
    build(forge, store, built)
    remove_object(store, "alice/only.bundle")
    report = stats("--no-write")
    assert report["pass"]["syncd_repos_written"] == 0
    head = store.head("alice")
    assert head is not None and head.get("SyncdRepos") == "1"
    assert stats()["pass"]["syncd_repos_written"] == 1


def test_table_output(
        store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]) -> None:
    build(forge, store, built)
    proc = run_cli("stats")
    assert proc.returncode == 0, proc.stderr
    assert "repositories.archived" in proc.stdout and "users.tracked" in proc.stdout


def test_rebuild_after_flushall_restores_every_user(
    store: Store, forge: Forge, r: redis.Redis
) -> None:
    build(forge, store)  # the scores are the stored objects' times: those of a real sync
    r.flushall()
    proc = run_cli("rebuild")
    assert proc.returncode == 0, proc.stderr
    members = dict(r.zrange("tracked", 0, -1, withscores=True))
    assert set(members) == {f"github.com/{x}" for x in
                            ("octocat", "alice", "bob", "alice-x", "ghost")}
    for member, score in members.items():
        head = store.head(member.removeprefix("github.com/"))
        assert head is not None
        last_sync = parse_rfc3339(head.get("LastSync"))
        assert last_sync is not None
        assert abs(score - last_sync.timestamp()) < 5


def test_rebuild_keeps_newer_scores_and_redis_only_users(
    store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]
) -> None:
    build(forge, store, built)
    future = time.time() + 10_000
    r.zadd("tracked", {"github.com/alice": future, "github.com/only-in-redis": -math.inf})
    assert run_cli("rebuild").returncode == 0
    assert r.zscore("tracked", "github.com/alice") == future
    assert r.zscore("tracked", "github.com/only-in-redis") == -math.inf
    assert r.zscore("tracked", "github.com/octocat") is not None


def _redis_snapshot(r: redis.Redis) -> dict[str, object]:
    return {k: r.dump(k) for k in r.scan_iter("*")}


def _store_snapshot(store: Store) -> dict[str, object]:
    out: dict[str, object] = {}
    for info in store.list(""):
        head = store.head(info.key)
        out[info.key] = (info.size, info.last_modified, head and dict(head.metadata))
    return out


def test_no_write_writes_nothing_anywhere(
        store: Store, forge: Forge, r: redis.Redis, built: dict[str, Snapshot]) -> None:
    """`stats --no-write`: Redis and the store are the same, key for key, before and after."""
    build(forge, store, built)
    remove_object(store, "alice/only.bundle")  # SyncdRepos is stale: a writing pass would fix it
    r.hdel("bulkbackup:syncd", "octocat")  # and a cache entry is missing
    before = (_redis_snapshot(r), _store_snapshot(store))
    report = stats("--no-write")
    assert report["pass"]["wrote"] is False
    assert (_redis_snapshot(r), _store_snapshot(store)) == before
    assert not r.exists("bulkbackup:laststats")


def test_no_write_never_creates_the_store(
    clean_env: None, redis_url: str, store_url: str, r: redis.Redis
) -> None:
    proc = run_cli("stats", "--no-write")
    assert proc.returncode == 2 and "does not exist" in proc.stderr, proc.stderr
    if store_url.startswith("s3://"):
        import boto3

        assert boto3.client("s3").list_buckets()["Buckets"] == []
    else:
        assert not Path(store_url).exists()
    assert r.dbsize() == 0
