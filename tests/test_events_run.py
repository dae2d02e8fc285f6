"""A re-pass that follows GitHub's activity, end to end with real processes (issue 22 phase 2):
the GitHub stand-in's changes are its events, published by the GH Archive stand-in over HTTP;
`bulkbackup events` marks the owners; `bulkbackup run` fetches only what changed, a push with
no listing request at all; `bulkbackup restore` brings the increment back."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import chains, layout
from bulkbackup.events import hours
from bulkbackup.queue import history, keys
from bulkbackup.store import open_store
from bulkbackup.testing import gharchive as gh
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import git, restore, run_cli, track


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[gh.GHArchive]:
    with gh.GHArchive(tmp_path / "gharchive") as a:
        yield a


def _run(env: dict[str, str]) -> None:
    proc = run_cli("run", "--procs", "1", "--no-stats", env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_push_goes_through_events_and_run_with_no_listing_and_is_restorable(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, archive: gh.GHArchive,
    tmp_path: Path
) -> None:
    forge.add_users({"alice": [RepoSpec("r1"), RepoSpec("r2")], "bob": [RepoSpec("b")],
                     "carol": [RepoSpec("c")], "dave": [RepoSpec("d")]})
    logins = ["alice", "bob", "carol", "dave"]
    track(r, *logins)
    _run(run_env)  # the first pass: everyone listed and archived
    scores = dict(zip(logins, r.zmscore(keys.TRACKED, [keys.member(x) for x in logins]),
                      strict=True))
    store = open_store(config.load().store)
    alice = store.head(layout.user_key("alice"))
    assert alice is not None

    # Changes made "two hours ago": GH Archive publishes an hour once it has ended, and a
    # run claims the marks of hours that ended before it started.
    archive.clock = lambda: datetime.now(UTC) - timedelta(hours=2)
    forge.event_log = archive
    forge.push("alice", "r1", {"new.txt": b"pushed after the first pass\n"})  # refs only
    forge.add_repo("bob", RepoSpec("fresh"))  # a new repository: a listing
    forge.add_user("carol", [RepoSpec("late")])  # created unseen (no event)...
    forge.push("carol", "late", {"late.txt": b"late\n"})  # ...then pushed: not archived
    published = archive.publish_recorded()
    proc = run_cli("events", "--from", hours.name(published[0]), "--to",
                   hours.name(published[-1]), env={**run_env, "GHARCHIVE_URL": archive.url})
    assert proc.returncode == 0, proc.stderr
    forge.reset_counters()

    _run(run_env)
    assert forge.owner_requests("alice") == 0  # synced with no API request
    assert forge.clones("alice", "r1") == 1 and forge.clones("alice", "r2") == 0
    assert forge.owner_requests("bob") >= 1 and forge.clones("bob", "fresh") == 1
    assert forge.owner_requests("carol") >= 1 and forge.clones("carol", "late") == 1
    assert forge.owner_requests("dave") == 0 and forge.clones("dave", "d") == 0
    after = dict(zip(logins, r.zmscore(keys.TRACKED, [keys.member(x) for x in logins]),
                     strict=True))
    assert after["alice"] == scores["alice"] and after["dave"] == scores["dave"]
    assert all(scores[x] < after[x] < math.inf for x in ("bob", "carol"))  # type: ignore[operator]
    now_alice = store.head(layout.user_key("alice"))
    assert now_alice is not None and now_alice.metadata == alice.metadata
    bundle = store.head(layout.bundle_key("alice", "r1"))
    assert bundle is not None and chains.committed(bundle) == 1  # an increment
    store.close()
    assert [e.repos_changed for e in history.read(r, "alice")] == [1, 2]

    mirror = restore("alice", "r1", tmp_path / "restored")
    assert git("show", "HEAD:new.txt", cwd=mirror) == "pushed after the first pass\n"
