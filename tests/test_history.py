"""queue/history.py (a user's last syncs) and queue/priority.py, on a real redis-server."""

from __future__ import annotations

import time

import redis

from bulkbackup.queue import history, keys, priority
from bulkbackup.queue.history import SyncEntry


def test_history_keeps_the_last_50_newest_first_and_expires(r: redis.Redis) -> None:
    for i in range(60):
        history.record(r, "Octo-Cat", history.entry(1_700_000_000 + i, i % 3, 1000 * i,
                                                    i % 2, "1 of 2 repositories failed\nx"
                                                    if i % 2 else ""))
    got = history.read(r, "octo-cat")  # logins ignore case: one list per account
    assert len(got) == keys.HISTORY_MAX == 50
    assert [e.time_s for e in got] == [1_700_000_000 + i for i in range(59, 9, -1)]
    assert got[0] == SyncEntry(1_700_000_059, 59 % 3, 59_000, 1, "1 of 2 repositories failed x")
    assert got[1].error == "" and got[1].to_json()["error"] is None
    assert got[0].to_json() == {"time": "2023-11-14T22:14:19Z", "repos_changed": 2,
                                "bytes": 59_000, "errors": 1,
                                "error": "1 of 2 repositories failed x",
                                "count": 1, "since": "2023-11-14T22:14:19Z"}
    assert r.llen("bulkbackup:log:octo-cat") == 50
    assert 0 < r.ttl("bulkbackup:log:octo-cat") <= keys.HISTORY_TTL_S
    assert history.read(r, "OCTO-CAT", limit=3) == got[:3]


def test_history_entries_are_bounded_and_bad_ones_skipped(r: redis.Redis) -> None:
    e = history.entry(float("nan"), -1, 2**40, 0, "e" * 10_000)
    assert e.time_s == 0 and e.repos_changed == 0 and e.nbytes == 2**40
    assert len(e.encode()) <= 40 + history.ERROR_MAX_CHARS
    history.record(r, "bob", e)
    r.lpush(keys.history("bob"), "not an entry", "1 2 3", "-1 2 3 4", "9" * 30 + " 1 1 1")
    got = history.read(r, "bob")
    assert got == [SyncEntry(0, 0, 2**40, 0, "e" * history.ERROR_MAX_CHARS)]
    assert SyncEntry.decode(b"5 1 2 0") == SyncEntry(5, 1, 2, 0)
    assert SyncEntry(10**15, 0, 0, 0).to_json()["time"] is None  # past year 9999


def test_priority_is_written_once_with_redis_time(r: redis.Redis) -> None:
    before = time.time()
    assert priority.make_priority(r, "Octo-Cat") is True
    score = r.zscore(keys.PRIORITY, "github.com/Octo-Cat")
    assert score is not None and abs(score - before) < 60
    r.zadd(keys.PRIORITY, {"github.com/Octo-Cat": before + 86_400})  # synced: due tomorrow
    assert priority.make_priority(r, "Octo-Cat") is False  # signing in again: no sync forced
    assert r.zscore(keys.PRIORITY, "github.com/Octo-Cat") == before + 86_400
    assert priority.is_priority(r, "Octo-Cat") and not priority.is_priority(r, "bob")


def test_quiet_syncs_in_a_row_are_one_entry(r: redis.Redis) -> None:
    """An idle user's history is one entry however often it is synced (the memory of
    100 M users' histories); a sync that did something starts a new entry, and the run's
    first and newest times and bytes are kept."""
    t0 = 1_700_000_000
    assert history.record(r, "Idle", history.entry(t0, 0, 0, 0)) is history.Recorded.ADDED
    for i in range(1, 60):
        assert history.record(r, "idle", history.entry(t0 + i, 0, 7, 0)) \
            is history.Recorded.MERGED
    assert r.llen(keys.history("idle")) == 1
    assert history.read(r, "idle") == [SyncEntry(t0 + 59, 0, 59 * 7, 0, count=60, first_s=t0)]
    assert history.read(r, "idle")[0].to_json() == {
        "time": "2023-11-14T22:14:19Z", "repos_changed": 0, "bytes": 413, "errors": 0,
        "error": None, "count": 60, "since": "2023-11-14T22:13:20Z"}
    memory = r.memory_usage(keys.history("idle"))
    assert memory is not None and memory < 300, memory
    # Something archived, something failed, then quiet again: each its own entry.
    assert history.record(r, "idle", history.entry(t0 + 60, 2, 100, 0)) is history.Recorded.ADDED
    assert history.record(r, "idle", history.entry(t0 + 61, 0, 0, 1, "x")) \
        is history.Recorded.ADDED
    assert history.record(r, "idle", history.entry(t0 + 62, 0, 0, 0)) is history.Recorded.ADDED
    assert history.record(r, "idle", history.entry(t0 + 63, 0, 0, 0)) is history.Recorded.MERGED
    got = history.read(r, "idle")
    assert [(e.time_s, e.count, e.since_s) for e in got] == [
        (t0 + 63, 2, t0 + 62), (t0 + 61, 1, t0 + 61), (t0 + 60, 1, t0 + 60),
        (t0 + 59, 60, t0)]
    # A run's entry that is not one (by hand, a later version) is skipped, never merged into.
    r.lpush(keys.history("idle"), "=1 2 3", "=99999999999999999999 2 1 0")
    assert history.record(r, "idle", history.entry(t0 + 64, 0, 0, 0)) is history.Recorded.ADDED
    assert [e.time_s for e in history.read(r, "idle")][:2] == [t0 + 64, t0 + 63]
    assert SyncEntry.decode("=10 3 20 5") == SyncEntry(10, 0, 5, 0, count=3, first_s=10)
    for entry in got:  # what decode reads, encode writes back
        assert SyncEntry.decode(entry.encode()) == entry
