"""The quota broker with a real redis-server, as separate processes would share it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from bulkbackup.forge.quota_broker import (
    NO_TOKEN_ID,
    QuotaBroker,
    Reservation,
    Resource,
    Wait,
    WaitReason,
    token_id,
)
from bulkbackup.queue import keys
from bulkbackup.testing.forge import Forge, RepoSpec

TOKEN_A = "ghp_tokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
TOKEN_B = "ghp_tokenBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def brokers(redis_url: str, tokens: list[str], n: int = 2) -> list[QuotaBroker]:
    """`n` brokers on their own connections: what `n` processes would have."""
    return [QuotaBroker(redis.Redis.from_url(redis_url), tokens) for _ in range(n)]


def spent(reset_in_s: float, remaining: int = 0) -> dict[str, str]:
    return {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Limit": "5000",
            "X-RateLimit-Reset": str(int(time.time() + reset_in_s)),
            "X-RateLimit-Resource": "graphql"}


def test_an_unknown_token_has_its_full_quota_and_reservations_are_shared(
        redis_url: str) -> None:
    one, two = brokers(redis_url, [TOKEN_A])
    first = one.reserve(Resource.GRAPHQL, 3)
    assert isinstance(first, Reservation) and first.remaining == 4997
    assert first.token == TOKEN_A and first.token_id == token_id(TOKEN_A)
    second = two.reserve(Resource.GRAPHQL, 1)
    assert isinstance(second, Reservation) and second.remaining == 4996
    assert isinstance(two.reserve(Resource.CORE), Reservation)  # its own budget


def test_a_known_spent_quota_makes_every_process_wait_and_send_nothing(
        forge: Forge, redis_url: str) -> None:
    forge.add_user("alice", [RepoSpec("a", missing=True)])
    forge.set_token_budget(TOKEN_A, 3, 120)  # REST: 3 requests, then 403 until the reset
    processes = brokers(redis_url, [TOKEN_A], 3)
    waits: list[Wait] = []
    for _round in range(4):
        for broker in processes:
            got = broker.reserve(Resource.CORE)
            if isinstance(got, Wait):
                waits.append(got)
                continue
            req = urllib.request.Request(f"{forge.url}/users/alice/repos",
                                         headers={"Authorization": f"token {got.token}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    broker.record(got, dict(resp.headers))
            except urllib.error.HTTPError as exc:  # would be a request sent in vain
                pytest.fail(f"request sent after the quota was spent: {exc.code}")
    assert forge.counters["api"] == 3 and forge.counters["api_403"] == 0
    assert len(waits) == 9
    assert all(w.reason is WaitReason.SPENT and 100 < w.seconds <= 121 for w in waits)


def test_the_token_with_most_headroom_is_picked(redis_url: str) -> None:
    broker, other = brokers(redis_url, [TOKEN_A, TOKEN_B])
    a = broker.reserve(Resource.GRAPHQL)
    assert isinstance(a, Reservation)
    other.record(a, spent(600, remaining=10))
    picks = [broker.reserve(Resource.GRAPHQL) for _ in range(3)]
    assert {p.token for p in picks if isinstance(p, Reservation)} == {
        TOKEN_B if a.token == TOKEN_A else TOKEN_A}


def test_reservations_are_atomic_across_processes(redis_url: str) -> None:
    processes = brokers(redis_url, [TOKEN_A], 4)
    first = processes[0].reserve(Resource.GRAPHQL)
    assert isinstance(first, Reservation)
    processes[0].record(first, spent(600, remaining=60))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: processes[i % 4].reserve(Resource.GRAPHQL), range(100)))
    assert sum(isinstance(g, Reservation) for g in got) == 60


def test_answers_correct_the_state_and_a_new_window_refills(redis_url: str) -> None:
    one, two = brokers(redis_url, [TOKEN_A])
    res = one.reserve(Resource.GRAPHQL)
    assert isinstance(res, Reservation)
    assert one.record(res, spent(600, remaining=100)) == 100
    assert one.record(res, spent(600, remaining=120)) == 100  # an older answer, same window
    assert one.record(res, {"X-RateLimit-Remaining": "lots"}) is None  # not headers: ignored
    assert two.record(res, spent(-5, remaining=0)) == 0  # a window that has ended...
    assert isinstance(two.reserve(Resource.GRAPHQL), Reservation)  # ...is full again


def test_losing_the_keys_loses_nothing(redis_url: str) -> None:
    one, two = brokers(redis_url, [TOKEN_A])
    res = one.reserve(Resource.GRAPHQL)
    assert isinstance(res, Reservation)
    one.record(res, spent(600))
    assert isinstance(two.reserve(Resource.GRAPHQL), Wait)
    redis.Redis.from_url(redis_url).flushall()
    again = two.reserve(Resource.GRAPHQL)
    assert isinstance(again, Reservation) and again.remaining == 4999


def test_a_secondary_limit_pauses_the_token_for_every_process(redis_url: str) -> None:
    one, two = brokers(redis_url, [TOKEN_A])
    res = one.reserve(Resource.CORE)
    assert isinstance(res, Reservation)
    assert one.pause(res, "30").length_s == 30
    for broker in (one, two):
        for resource in Resource:  # secondary limits are per token, whatever the API
            got = broker.reserve(resource)
            assert isinstance(got, Wait) and got.reason is WaitReason.PAUSED
            assert 10 < got.seconds <= 31
    # Another process's request that was already in flight: the pause stays as it is.
    assert two.pause(res, "5").length_s == 30
    # Both tokens of a process: the other one is used meanwhile.
    both = QuotaBroker(redis.Redis.from_url(redis_url), [TOKEN_A, TOKEN_B])
    picked = both.reserve(Resource.CORE)
    assert isinstance(picked, Reservation) and picked.token == TOKEN_B


def test_secondary_pauses_default_to_60s_and_double_while_they_repeat(redis_url: str) -> None:
    one, two = brokers(redis_url, [TOKEN_A])
    res = one.reserve(Resource.CORE)
    assert isinstance(res, Reservation)
    r = redis.Redis.from_url(redis_url)
    pause_key = keys.quota_pause(res.token_id)
    assert one.pause(res, None).length_s == 60  # no Retry-After
    r.hset(pause_key, "until", f"{time.time() - 1:.3f}")  # the pause ended a second ago
    assert two.pause(res, None).length_s == 120
    r.hset(pause_key, "until", f"{time.time() - 1:.3f}")
    assert one.pause(res, "10").length_s == 240
    r.hset(pause_key, mapping={"until": f"{time.time() - 1000:.3f}", "length_s": 240})
    assert two.pause(res, "10").length_s == 10  # long after: not a repeat


def test_tokens_never_appear_in_redis(redis_url: str) -> None:
    one, two = brokers(redis_url, [TOKEN_A, TOKEN_B])
    held = []
    for broker in (one, two):
        for resource in Resource:
            res = broker.reserve(resource, 2)
            assert isinstance(res, Reservation)
            broker.record(res, spent(600, remaining=42))
            held.append((broker, res))
    for broker, res in held:
        broker.pause(res, "3")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    found = list(r.scan_iter("*"))
    assert len(found) == 6 and all(k.startswith(keys.QUOTA_PREFIX) for k in found)
    for key in found:
        text = key + json.dumps(r.hgetall(key))
        for token in (TOKEN_A, TOKEN_B):
            assert token not in text and token[4:20] not in text


def test_without_tokens_one_anonymous_quota(redis_url: str) -> None:
    got = QuotaBroker(redis.Redis.from_url(redis_url), []).reserve(Resource.CORE)
    assert isinstance(got, Reservation)
    assert got.token is None and got.token_id == NO_TOKEN_ID


@pytest.mark.parametrize(("body", "limit"), [
    (b'{"message": "You have exceeded a secondary rate limit. Please wait."}', True),
    (b'{"message": "You have triggered an abuse detection mechanism. Please wait."}', True),
    (b'{"message": "Resource not accessible by personal access token"}', False),
])
def test_a_403_without_headers_is_a_limit_only_when_its_body_says_so(
        redis_url: str, body: bytes, limit: bool) -> None:
    """A limit pauses the token for every process; anything else is a refusal (exit 2)."""
    one, two = brokers(redis_url, [TOKEN_A])
    res = one.reserve(Resource.GRAPHQL)
    assert isinstance(res, Reservation)
    assert one.limited(res, 403, {}, body, 60.0) is limit
    assert isinstance(two.reserve(Resource.GRAPHQL), Wait if limit else Reservation)
