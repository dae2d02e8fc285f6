"""Claims, completion and lock refresh against a real redis-server."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbackup.errors import LockLost
from bulkbackup.queue import keys, tracked
from bulkbackup.queue.connection import Scripts, server_time
from bulkbackup.queue.locks import LockKeeper
from tests.helpers import wait_for


def claimer(r: redis.Redis, wid: str, start: float, ttl: int = 10) -> tracked.Claimer:
    return tracked.Claimer(r, Scripts(r), wid, ttl, start)


def test_claims_never_synced_first_then_oldest_below_run_start(r: redis.Redis) -> None:
    now = server_time(r)
    r.zadd("tracked", {"github.com/old": 100, "github.com/never": -math.inf,
                       "github.com/older": 50, "github.com/fresh": now + 100})
    c = claimer(r, "1.0.h", now)
    assert c.claim(2) == (["github.com/never", "github.com/older"], 1)
    assert c.claim(10) == (["github.com/old"], 0)
    assert c.claim(10) == ([], 0)  # `fresh` synced after the run started: not claimed
    assert r.get("lock:github.com/never") == "1.0.h"
    assert 0 < r.ttl("lock:github.com/never") <= 10
    # Parked at +inf while claimed; the score it had is kept aside.
    assert r.zscore("tracked", "github.com/never") == math.inf
    assert r.hget(keys.CLAIMS, "github.com/never") == "-inf"


def test_complete_and_give_back(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf, "github.com/b": 42})
    start = int(server_time(r))
    c = claimer(r, "1.0.h", start)
    assert c.claim(2)[0] == ["github.com/a", "github.com/b"]
    assert c.finish("github.com/a", True, "3 1 0 0")
    assert c.finish("github.com/b", False)
    assert start - 1 <= r.zscore("tracked", "github.com/a") <= start + 5
    assert r.zscore("tracked", "github.com/b") == 42  # given back: its score restored
    assert r.hget(keys.SYNCD, "a") == "3 1 0 0"
    assert not r.exists("lock:github.com/a", "lock:github.com/b")
    assert r.zcard(keys.LEASES) == 0 and r.hlen(keys.CLAIMS) == 0
    assert claimer(r, "2.0.h", start).claim(5) == (["github.com/b"], 0)


def test_a_user_failing_max_attempts_times_is_skipped_by_this_run_only(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/bad": -math.inf, "github.com/ok1": 10, "github.com/ok2": 20})
    start = int(server_time(r))
    c = claimer(r, "1.0.h", start)
    for attempt in (1, 2):
        assert c.claim(1) == (["github.com/bad"], 2)
        assert c.fail("github.com/bad", 3) == 1  # given back for another attempt
        assert r.hget(keys.FAILURES, "github.com/bad") == str(attempt)
    assert c.claim(1) == (["github.com/bad"], 2)
    assert c.fail("github.com/bad", 3) == 2  # left for the next run
    assert r.zscore("tracked", "github.com/bad") == -math.inf  # still its last sync: never
    assert r.smembers(keys.deferred(start)) == {"github.com/bad"}
    assert 0 < r.ttl(keys.deferred(start)) <= keys.DEFERRED_TTL_S
    assert not r.hexists(keys.FAILURES, "github.com/bad")
    assert c.remaining() == 2
    # This run steps over it, from any worker; the run can end without it.
    other = claimer(r, "2.0.h", start)
    assert other.claim(1) == (["github.com/ok1"], 1)
    assert c.claim(5) == (["github.com/ok2"], 0)
    assert c.claim(5) == ([], 0) and c.remaining() == 0
    # Synced meanwhile by another host's run: this run no longer counts it as left out.
    r.zadd("tracked", {"github.com/ok3": 5})
    assert c.remaining() == 1
    r.zadd("tracked", {"github.com/bad": start + 1})
    assert c.remaining() == 1  # `ok3`, which the stale count would have hidden
    r.zadd("tracked", {"github.com/bad": -math.inf})
    r.zrem("tracked", "github.com/ok3")
    # The next run takes it first.
    assert claimer(r, "3.0.h", start + 1).claim(1)[0] == ["github.com/bad"]


def test_success_clears_the_failure_count(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf})
    c = claimer(r, "1.0.h", int(server_time(r)))
    c.claim(1)
    assert c.fail("github.com/a", 3) == 1
    c.claim(1)
    assert c.finish("github.com/a", True)
    assert r.hlen(keys.FAILURES) == 0


def test_completion_refused_when_the_lock_is_not_ours(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf})
    c = claimer(r, "1.0.h", int(server_time(r)))
    c.claim(1)
    r.set("lock:github.com/a", "9.9.other")
    assert not c.finish("github.com/a", True)
    assert r.zscore("tracked", "github.com/a") == math.inf  # untouched


def test_a_lock_is_never_taken_over_while_it_exists(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf, "github.com/b": -math.inf})
    r.set("lock:github.com/a", "someone.0.else", ex=60)
    c = claimer(r, "1.0.h", int(server_time(r)))
    assert c.claim(5) == (["github.com/b"], 1)  # `a` is still due, just not claimable now
    assert r.get("lock:github.com/a") == "someone.0.else"


def test_an_abandoned_claim_is_taken_over_after_its_lock_expires(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf})
    start = int(server_time(r))
    dead = claimer(r, "1.0.dead", start, ttl=2)
    assert dead.claim(1)[0] == ["github.com/a"]
    other = claimer(r, "2.0.alive", start, ttl=2)
    assert other.claim(1)[0] == []  # locked: not claimable
    # The lock and the lease carry the TTL; the dead worker never refreshes them, so they run
    # out: now, instead of in two seconds.
    assert 0 < r.pttl("lock:github.com/a") <= 2000
    lease = r.zscore(keys.LEASES, "github.com/a")
    assert lease is not None and 0 < lease - server_time(r) <= 2
    r.pexpire("lock:github.com/a", 1)
    r.zadd(keys.LEASES, {"github.com/a": server_time(r)}, xx=True)
    wait_for(lambda: not r.exists("lock:github.com/a"), 10, "the lock to expire")
    assert other.claim(1)[0] == ["github.com/a"]
    assert r.get("lock:github.com/a") == "2.0.alive"
    assert not dead.finish("github.com/a", True)
    assert other.finish("github.com/a", True)
    assert r.zscore("tracked", "github.com/a") >= start - 1


def test_in_flight_counts_claims_of_this_run(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf, "github.com/b": -math.inf})
    c = claimer(r, "1.0.h", int(server_time(r)))
    c.claim(1)
    assert (c.remaining(), c.in_flight()) == (1, 1)


def test_refresher_extends_locks_and_detects_a_lost_one(r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": -math.inf, "github.com/b": -math.inf})
    scripts = Scripts(r)
    c = tracked.Claimer(r, scripts, "1.0.h", 2, int(server_time(r)))
    claimed, _ = c.claim(2)
    keeper = LockKeeper(r, scripts, "1.0.h", 2)
    keeper.add(claimed, time.monotonic())
    keeper.start()
    try:
        # Both locks run down below a whole TTL; only the refresher (every ttl/2, both locks
        # in one call) can lift them above it again.
        r.pexpire("lock:github.com/a", 1800)
        r.pexpire("lock:github.com/b", 1800)
        wait_for(lambda: min(r.pttl("lock:github.com/a"), r.pttl("lock:github.com/b")) > 1800,
                 10, "the refresher to extend both locks")
        assert r.get("lock:github.com/a") == "1.0.h"
        keeper.check("github.com/a")
        r.set("lock:github.com/b", "thief.0.x")  # someone else's now
        assert keeper.refresh_once()
        with pytest.raises(LockLost):
            keeper.check("github.com/b")
        keeper.check("github.com/a")
    finally:
        keeper.stop()


def test_check_asks_redis_when_the_refresher_is_late(r: redis.Redis) -> None:
    """A stopped process (SIGSTOP) resumes with stale local state: check() must not trust it."""
    r.zadd("tracked", {"github.com/a": -math.inf})
    scripts = Scripts(r)
    c = tracked.Claimer(r, scripts, "1.0.h", 2, int(server_time(r)))
    c.claim(1)
    fake_now = [time.monotonic()]
    keeper = LockKeeper(r, scripts, "1.0.h", 2, clock=lambda: fake_now[0])
    keeper.add(["github.com/a"], fake_now[0])
    keeper.check("github.com/a")
    r.delete("lock:github.com/a")  # expired while we were stopped
    fake_now[0] += 10
    with pytest.raises(LockLost):
        keeper.check("github.com/a")


@settings(max_examples=8, deadline=None)
@given(users=st.integers(20, 120), claimers=st.integers(2, 8), batch=st.integers(1, 7))
def test_concurrent_claimers_never_share_a_user(
    redis_server: str, users: int, claimers: int, batch: int
) -> None:
    r = redis.Redis.from_url(redis_server, decode_responses=True)
    r.flushall()
    r.zadd("tracked", {f"github.com/u{i}": -math.inf for i in range(users)})
    start = int(server_time(r))
    seen: Counter[str] = Counter()
    holders: dict[str, str] = {}
    mu = threading.Lock()
    errors: list[str] = []

    def work(k: int) -> None:
        client = redis.Redis.from_url(redis_server, decode_responses=True)
        c = claimer(client, f"{k}.{k}.h", start)
        while True:
            got, _ = c.claim(batch)
            if not got:
                return
            with mu:
                for m in got:
                    if m in holders:
                        errors.append(f"{m} claimed by {k} while held by {holders[m]}")
                    holders[m] = str(k)
                    seen[m] += 1
            for m in got:
                with mu:
                    del holders[m]
                assert c.finish(m, True)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == users and set(seen.values()) == {1}
    assert r.zcount("tracked", "-inf", f"({start}") == 0
