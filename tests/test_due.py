"""Who a run claims once events are read, priority users, and marks taken at claim (issue 22
phase 2, issue 24; queue/claims.py, lua/claim.lua, lua/marks.lua), against a real
redis-server."""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bulkbackup.queue import events as queue_events
from bulkbackup.queue import keys
from bulkbackup.queue.claims import Claimed, Claimer, CompleteMode, Completion, DueReason
from bulkbackup.queue.connection import Scripts, server_time

DAY_S = 86_400
WID = "1.0.h"


def claimer(r: redis.Redis, start: float, wid: str = WID, **kw: Any) -> Claimer:
    return Claimer(r, Scripts(r), wid, 10, start, **kw)


def member(login: str) -> str:
    return keys.member(login)


def mark(r: redis.Redis, login: str, repos: list[str], listing: bool = False,
         hour_end: float = 1000.0) -> None:
    """Marks as `bulkbackup events` writes them (queue/events.py, events_mark.lua)."""
    marks = queue_events.DueMarks(r, Scripts(r), track_new=False)
    marks.score_s = hour_end
    for repo in repos or ["x"]:
        marks.add(login, repo, needs_listing=listing)
    marks.flush()


def events_read(r: redis.Redis) -> None:
    r.hset(keys.EVENTS_STATUS, mapping={"last_hour": "2026-01-01-0"})


def test_without_events_every_user_below_the_run_start_is_due(r: redis.Redis) -> None:
    now = server_time(r)
    r.zadd(keys.TRACKED, {member("never"): -math.inf, member("day"): now - DAY_S,
                          member("fresh"): now + 100})
    batch = claimer(r, now).claim_due(10)
    assert batch.claimed == [Claimed(member("never"), DueReason.NEVER_SYNCED),
                             Claimed(member("day"), DueReason.SCHEDULED)]
    assert batch.remaining == 0


def test_with_events_only_due_users_are_claimed_the_marked_first(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("never"): -math.inf, member("day"): now - DAY_S,
                          member("old"): now - 31 * DAY_S, member("pushed"): now - DAY_S,
                          member("forked"): now - 2 * DAY_S, member("later"): now - DAY_S})
    mark(r, "pushed", ["b", "a"], hour_end=2000)
    mark(r, "forked", ["f"], listing=True, hour_end=1000)
    mark(r, "later", ["z"], hour_end=now + 3600)  # an hour that ends after the run's start
    c = claimer(r, now)
    assert c.remaining() == 4
    batch = c.claim_due(2)
    assert batch.claimed == [Claimed(member("forked"), DueReason.EVENTS_LISTING),
                             Claimed(member("pushed"), DueReason.EVENTS_REFS, ("a", "b"))]
    assert batch.remaining == 2
    assert c.claimed_as(member("pushed")) == batch.claimed[1]
    assert c.claim(10) == ([member("never"), member("old")], 0)
    assert c.claimed_as(member("old")) == Claimed(member("old"), DueReason.FULL_PASS)
    assert c.claim(10) == ([], 0) and c.remaining() == 0  # `day` and `later` cost nothing


def test_full_pass_days_comes_from_the_settings_value(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now - 3 * DAY_S})
    assert claimer(r, now).claim(1) == ([], 0)
    assert claimer(r, now, full_pass_days=2).claim(1) == ([member("a")], 0)


def test_priority_users_come_before_everyone_and_next_after_priority_hours(
        r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("never"): -math.inf, member("vip"): now - 60,
                          member("later"): now - 60})
    r.zadd(keys.PRIORITY, {member("vip"): now - 1, member("later"): now + 3600})
    c = claimer(r, now, priority_hours=2)
    batch = c.claim_due(1)
    assert batch.claimed == [Claimed(member("vip"), DueReason.PRIORITY)]
    assert r.zscore(keys.PRIORITY, member("vip")) == math.inf  # parked while claimed
    assert c.finish(member("vip"), False) is Completion.DONE
    assert r.zscore(keys.PRIORITY, member("vip")) == now - 1  # given back: due again
    assert c.claim(1) == ([member("vip")], 1)
    before = server_time(r)
    assert c.finish(member("vip"), True) is Completion.DONE
    after = server_time(r)
    assert before - 1 <= r.zscore(keys.PRIORITY, member("vip")) - 2 * 3600 <= after + 1
    assert r.zscore(keys.PRIORITY, member("later")) == now + 3600  # untouched: not due
    assert c.claim(5) == ([member("never")], 0)


def test_marks_are_taken_at_claim_and_a_mark_during_the_sync_is_kept(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now - DAY_S})
    mark(r, "a", ["one"], hour_end=1000)
    c = claimer(r, now)
    assert c.claim(1) == ([member("a")], 0)
    assert r.zscore(keys.EVENTS_DUE, member("a")) is None
    assert not r.exists(keys.events_refs("a"))
    assert r.smembers(keys.taken_refs(member("a"))) == {"one"}
    mark(r, "a", ["two"], hour_end=5000)  # during the sync: a fresh mark, out of claims' way
    assert r.zscore(keys.EVENTS_DUE, member("a")) == math.inf
    assert c.finish(member("a"), True) is Completion.DONE
    synced = server_time(r)
    assert not r.exists(keys.taken(member("a")), keys.taken_refs(member("a")))
    assert r.smembers(keys.events_refs("a")) == {"two"}
    assert now <= r.zscore(keys.EVENTS_DUE, member("a")) <= synced + 1  # due from the sync on
    assert c.claim(1) == ([], 0)  # not in this run: its mark came after its sync
    later = claimer(r, synced + 1)
    assert later.claim_due(1).claimed == [Claimed(member("a"), DueReason.EVENTS_REFS,
                                                  ("two",))]


def test_a_give_back_merges_the_taken_marks_with_fresh_ones(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now - DAY_S, member("b"): now - DAY_S})
    mark(r, "a", ["one"], hour_end=1000)
    mark(r, "b", ["one"], hour_end=1000)
    c = claimer(r, now)
    assert c.claim(2)[0] == [member("a"), member("b")]
    mark(r, "a", ["two"], hour_end=5000)
    mark(r, "b", ["new"], listing=True, hour_end=5000)
    assert c.finish(member("a"), False) is Completion.DONE
    assert c.fail(member("b"), 3) is Completion.DONE
    assert r.zscore(keys.EVENTS_DUE, member("a")) == 1000  # the older mark's time kept
    assert r.smembers(keys.events_refs("a")) == {"one", "two"}
    assert r.zscore(keys.EVENTS_DUE, member("b")) == 1000
    assert r.sismember(keys.EVENTS_LISTING, member("b")) and not r.exists(keys.events_refs("b"))
    assert not r.exists(keys.taken(member("a")), keys.taken_refs(member("a")),
                        keys.taken(member("b")), keys.taken_refs(member("b")))
    assert r.zscore(keys.TRACKED, member("a")) == now - DAY_S
    assert {x.member: x.reason for x in c.claim_due(2).claimed} == {
        member("a"): DueReason.EVENTS_REFS, member("b"): DueReason.EVENTS_LISTING}


def test_synced_from_refs_keeps_the_last_full_listing_time(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now - DAY_S})
    r.hset(keys.FAILURES, member("a"), 1)
    mark(r, "a", ["one"], hour_end=1000)
    c = claimer(r, now)
    assert c.claim(1) == ([member("a")], 0)
    assert c.complete(member("a"), CompleteMode.SYNCED_REFS, "1 0 0 0 1", repos=1,
                      nbytes=10) is Completion.DONE
    assert r.zscore(keys.TRACKED, member("a")) == now - DAY_S
    assert r.hget(keys.FAILURES, member("a")) is None
    assert r.hget(keys.SYNCD, "a") == "1 0 0 0 1"
    assert not r.exists(keys.EVENTS_DUE, keys.events_refs("a"), keys.taken(member("a")),
                        keys.taken_refs(member("a")), keys.LEASES, keys.CLAIMS)
    rates = [r.hgetall(k) for k in r.scan_iter(keys.RATE_PREFIX + "*")]
    assert rates == [{"users": "1", "repos": "1", "bytes": "10"}]
    assert c.claimed_as(member("a")) is None
    assert c.claim(1) == ([], 0)


def test_an_abandoned_claim_gives_its_marks_to_the_next_claim(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now - DAY_S})
    r.zadd(keys.PRIORITY, {member("a"): now + 3600})
    mark(r, "a", ["one"], hour_end=1000)
    dead = claimer(r, now, wid="9.9.dead")
    assert dead.claim(1) == ([member("a")], 0)
    mark(r, "a", ["two"], hour_end=5000)
    r.delete(keys.lock(member("a")))  # its lock expired: the worker was killed
    r.zadd(keys.LEASES, {member("a"): now - 1})
    c = claimer(r, now)
    assert c.claim_due(1).claimed == [Claimed(member("a"), DueReason.EVENTS_REFS,
                                              ("one", "two"))]
    assert r.hget(keys.taken(member("a")), "due") == "1000"
    assert dead.finish(member("a"), True) is Completion.LOST
    assert c.finish(member("a"), False) is Completion.DONE
    assert r.zscore(keys.EVENTS_DUE, member("a")) == 1000
    assert r.zscore(keys.PRIORITY, member("a")) == now + 3600
    assert r.zscore(keys.TRACKED, member("a")) == now - DAY_S


def test_marks_of_a_user_no_longer_tracked_are_dropped(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("gone"): now - DAY_S})
    mark(r, "gone", ["one"])
    r.zadd(keys.PRIORITY, {member("gone"): now - 1})
    r.zrem(keys.TRACKED, member("gone"))
    c = claimer(r, now)
    assert c.remaining() == 2
    assert c.claim(5) == ([], 2)  # counted before the claim
    assert c.remaining() == 0  # else a run would wait for it forever
    assert not r.exists(keys.EVENTS_DUE, keys.PRIORITY, keys.events_refs("gone"))


def test_reset_makes_everyone_due_again_and_leaves_marks(r: redis.Redis) -> None:
    from bulkbackup.queue import tracked
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now - DAY_S, member("b"): now - DAY_S})
    mark(r, "a", ["one"])
    tracked.reset(r)
    assert r.smembers(keys.events_refs("a")) == {"one"}
    batch = claimer(r, now).claim_due(5)
    assert [(x.member, x.reason) for x in batch.claimed] == [
        (member("a"), DueReason.FULL_PASS), (member("b"), DueReason.FULL_PASS)]


def test_a_deferred_marked_user_is_stepped_over(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("bad"): now - DAY_S, member("ok"): now - DAY_S})
    mark(r, "bad", ["x"], hour_end=1000)
    mark(r, "ok", ["x"], hour_end=2000)
    c = claimer(r, now)
    assert c.claim(1) == ([member("bad")], 1)
    assert c.fail(member("bad"), 1) is Completion.DEFERRED
    assert c.remaining() == 1
    assert c.claim(1) == ([member("ok")], 0)
    assert r.zscore(keys.EVENTS_DUE, member("bad")) == 1000  # kept for the next run


class CountingConnection(redis.Connection):
    """A real connection that counts its round trips (each packed send is one)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.mark.parametrize("users", [200, 4000])
def test_a_claim_is_two_round_trips_and_its_commands_do_not_grow_with_users(
        redis_url: str, users: int) -> None:
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    now = server_time(admin)
    events_read(admin)
    admin.zadd(keys.TRACKED, {member(f"u{i}"): now - (i % 60) * DAY_S for i in range(users)})
    admin.zadd(keys.PRIORITY, {member(f"u{i}"): now - 1 for i in range(0, users, 50)})
    mark(admin, "u1", ["a"])
    pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True,
                                         connection_class=CountingConnection)
    r = redis.Redis(connection_pool=pool)
    c = claimer(r, now)
    c.claim(5)  # scripts loaded, connection made
    admin.config_resetstat()
    CountingConnection.sends = 0
    claimed, _ = c.claim(5)
    assert len(claimed) == 5 and CountingConnection.sends == 2
    stats = admin.info("commandstats")
    calls = {k: v["calls"] for k, v in stats.items() if k not in ("cmdstat_config",)}
    # The same commands whatever the population: 10 reads, one script call and, inside it,
    # a bounded number of commands per candidate.
    assert calls["cmdstat_evalsha"] == 1
    assert calls["cmdstat_zrange"] == 4 and calls["cmdstat_zcount"] == 4
    assert sum(calls.values()) <= 2 + 10 + 5 * 40


# -- a model: any sequence of marks, claims, give backs and completions loses no mark --------

LOGINS = ["a", "b", "c", "d"]
Op = tuple[str, str, int, bool]  # (kind, login, repo or hour, listing)


@hsettings(max_examples=120, deadline=None)
@given(ops=st.lists(st.tuples(
    st.sampled_from(["mark", "mark", "claim", "synced", "refs", "back", "fail", "die"]),
    st.sampled_from(LOGINS), st.integers(1, 6), st.sampled_from([False, False, False, True])),
    max_size=40))
def test_no_mark_is_ever_lost(redis_server: str, ops: list[Op]) -> None:
    r = redis.Redis.from_url(redis_server, decode_responses=True)
    r.flushall()
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member(x): now - DAY_S for x in LOGINS})
    # Per login: marks waiting (repos, listing, oldest hour or None: "since a sync") and
    # marks taken by a claim; which logins are claimed.
    queued: dict[str, tuple[set[str], bool, float | None] | None] = dict.fromkeys(LOGINS)
    taken: dict[str, tuple[set[str], bool, float | None] | None] = dict.fromkeys(LOGINS)
    claimed: set[str] = set()
    dead: set[str] = set()  # claimed, their worker killed: the next claim takes them over

    def merge(x: Any, y: Any) -> Any:
        if x is None or y is None:
            return x or y
        listing = x[1] or y[1]
        hours = [h for h in (x[2], y[2]) if h is not None]
        return (set() if listing else x[0] | y[0], listing, min(hours) if hours else None)

    for kind, login, n, listing in ops:
        m = member(login)
        if kind == "mark":
            mark(r, login, [f"r{n}"], listing=listing, hour_end=1000 * n)
            # events:due is ZADD NX: a login already due keeps its time.
            hour = None if login in claimed else 1000.0 * n
            if queued[login] is not None:
                hour = queued[login][2]  # type: ignore[index]
            queued[login] = merge(queued[login], (set() if listing else {f"r{n}"}, listing,
                                                  None))
            queued[login] = (queued[login][0], queued[login][1], hour)  # type: ignore[index]
        elif kind == "claim":
            c = claimer(r, server_time(r) + 1, full_pass_days=365)
            got = {x.member: x for x in c.claim_due(len(LOGINS)).claimed}
            assert set(got) == {member(x) for x in LOGINS if x in dead or
                                (x not in claimed and queued[x] is not None)}
            for x in LOGINS:
                if member(x) in got:
                    q = merge(taken[x], queued[x])  # a dead worker's marks given back first
                    assert q is not None
                    want = DueReason.EVENTS_LISTING if q[1] else DueReason.EVENTS_REFS
                    assert got[member(x)].reason is want
                    assert set(got[member(x)].repos) == (set() if q[1] else q[0])
                    taken[x], queued[x] = q, None
                    claimed.add(x)
                    dead.discard(x)
        elif kind == "die" and login in claimed and login not in dead:
            r.delete(keys.lock(m))  # its lock expired
            r.zadd(keys.LEASES, {m: 0})
            dead.add(login)
        elif login in dead:
            c = claimer(r, now)
            assert c.complete(m, CompleteMode.SYNCED) is Completion.LOST
        elif login in claimed:
            c = claimer(r, now)
            mode = {"synced": CompleteMode.SYNCED, "refs": CompleteMode.SYNCED_REFS,
                    "back": CompleteMode.GIVE_BACK, "fail": CompleteMode.FAILED}[kind]
            assert c.complete(m, mode, max_attempts=1000) is Completion.DONE
            if mode in (CompleteMode.GIVE_BACK, CompleteMode.FAILED):
                queued[login] = merge(queued[login], taken[login])
            taken[login] = None
            claimed.discard(login)
        for x in LOGINS:
            check(r, x, queued[x], taken[x])


def check(r: redis.Redis, login: str, queued: Any, taken: Any) -> None:
    m = member(login)
    score = r.zscore(keys.EVENTS_DUE, m)
    assert (score is not None) == (queued is not None)
    if queued is not None:
        repos, listing, hour = queued
        if hour is not None:
            assert score == hour
        assert r.sismember(keys.EVENTS_LISTING, m) == listing
        assert r.smembers(keys.events_refs(login)) == repos
    if taken is None:
        assert not r.exists(keys.taken(m), keys.taken_refs(m))
    else:
        repos, listing, hour = taken
        assert r.smembers(keys.taken_refs(m)) == repos
        assert (r.hget(keys.taken(m), "listing") == "1") == listing


def test_in_flight_counts_users_claimed_for_their_marks(r: redis.Redis) -> None:
    now = server_time(r)
    events_read(r)
    r.zadd(keys.TRACKED, {member("a"): now + 10, member("b"): now + 10})  # synced in this run
    mark(r, "a", ["x"])
    c = claimer(r, now)
    assert c.claim(5) == ([member("a")], 0)
    assert (c.remaining(), c.in_flight()) == (0, 1)  # the run waits for it
