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
                                "error": "1 of 2 repositories failed x"}
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
