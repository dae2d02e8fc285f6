"""The quota broker: one view of every token's GitHub quota, shared in Redis by every process.

Per token (named by a hash, never by the token) and resource (`core` for REST, `graphql`), it
keeps the last known `remaining` and `reset` from GitHub's `x-ratelimit-*` headers. Before a
request a process reserves its cost (`reserve`, one Lua call): the token with the most
headroom is picked and charged; when every token is spent (or paused) the answer is a `Wait`
until the earliest reset, and nothing is sent. `record` corrects the state from an answer's
headers; `pause` stops a token for every process after a secondary-limit answer
(Retry-After, else 60 s, doubling while they repeat). A token the broker knows nothing about
is assumed to have its full quota, so losing the keys loses nothing.

Without Redis (`QuotaBroker(None, ...)`: `bulkbackup sync`), or while Redis does not answer, the
same rules run on this process's own state (`LocalQuota`): nothing is shared then, nothing
fails either.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from importlib import resources
from typing import TypeVar

import orjson
import redis

from bulkbackup.config import token_origin
from bulkbackup.errors import Interrupted, RateLimited, TokenRefused
from bulkbackup.queue import keys
from bulkbackup.redact import redact
from bulkbackup.timeutil import format_rfc3339

_T = TypeVar("_T")

log = logging.getLogger(__name__)
# A 403 whose body says one of these is a limit, never a refused token: GitHub's secondary
# limits ("You have exceeded a secondary rate limit"), and their older wording ("You have
# triggered an abuse detection mechanism"), sometimes sent without Retry-After.
_LIMIT_WORDS = (b"rate limit", b"abuse detection")

WINDOW_S = 3600  # GitHub's rate-limit window
KEY_TTL_S = 2 * WINDOW_S
MAX_PAUSE_S = 3600
NO_TOKEN_ID = "anonymous"  # noqa: S105 - the name of "no token", not a secret
DEFAULT_PAUSE_S = 60  # a secondary limit without Retry-After (GitHub: at least a minute)
# After Redis failed to answer, this process counts on its own for this long, then asks again.
FALLBACK_S = 10.0


class Resource(StrEnum):
    CORE = "core"  # REST
    GRAPHQL = "graphql"


class WaitReason(Enum):
    SPENT = "spent"  # every token's quota is known spent until its reset
    PAUSED = "paused"  # every usable token is paused by a secondary limit


@dataclass(frozen=True)
class Reservation:
    """`cost` points of `resource` reserved on one token; send the request with `token`."""

    resource: Resource
    token_id: str
    cost: int
    remaining: int  # the token's remaining after this reservation, as the broker knows it
    token: str | None = field(repr=False, default=None)  # None: send no Authorization


@dataclass(frozen=True)
class Wait:
    """Every token is spent or paused: send nothing for `seconds`."""

    resource: Resource
    seconds: float
    reason: WaitReason


@dataclass(frozen=True)
class Pause:
    seconds: float  # until the token may be used again
    length_s: float  # this pause's length (doubles while secondary limits repeat)


@dataclass(frozen=True)
class RateHeaders:
    """The x-ratelimit-* headers of one answer."""

    remaining: int
    reset: int  # unix s
    limit: int
    resource: Resource | None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders | None:
        """None when the headers are missing or not numbers (they come from the network)."""
        h = {k.lower(): v for k, v in headers.items()}
        try:
            remaining = int(h["x-ratelimit-remaining"])
            reset = int(h["x-ratelimit-reset"])
            limit = int(h.get("x-ratelimit-limit", "0"))
        except (KeyError, ValueError):
            return None
        if not (0 <= remaining <= 10**9 and 0 < reset < 10**11 and 0 <= limit <= 10**9):
            return None
        name = h.get("x-ratelimit-resource", "")
        known = {r.value: r for r in Resource}
        return cls(remaining, reset, limit or max(remaining, 1), known.get(name))


def token_id(token: str | None) -> str:
    """How a token is named in Redis and logs: a hash, never the token."""
    if not token:
        return NO_TOKEN_ID
    return "sha256-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _script(name: str) -> str:
    return resources.files("bulkbackup").joinpath("lua", name).read_text(encoding="utf-8")


class QuotaBroker:
    """The shared quota of `tokens` (this process's tokens; other processes may share them).

    `r`: the Redis that shares the state (None: this process's own, see `LocalQuota`).
    `limits`: the points per window assumed for a token before any answer (GitHub: 5000).
    """

    def __init__(self, r: redis.Redis | None, tokens: Sequence[str],
                 limits: Mapping[Resource, int] | None = None) -> None:
        self._r = r
        values = [t for t in dict.fromkeys(tokens) if t]
        self._tokens: list[str | None] = list(values) or [None]
        self._ids = [token_id(t) for t in self._tokens]
        self._limits = {Resource.CORE: 5000, Resource.GRAPHQL: 5000, **(limits or {})}
        self.local = LocalQuota()
        self._down_until = 0.0  # monotonic: Redis is not asked before this
        self._git_next = 0
        if r is not None:
            self._reserve = r.register_script(_script("quota_reserve.lua"))
            self._record = r.register_script(_script("quota_record.lua"))
            self._pause = r.register_script(_script("quota_pause.lua"))

    @property
    def token_ids(self) -> list[str]:
        return list(self._ids)

    def any_token(self) -> str | None:
        """A token for git (not subject to the API's quota), in rotation, without waiting."""
        self._git_next = (self._git_next + 1) % len(self._tokens)
        return self._tokens[self._git_next]

    def _shared(self, redis_call: Callable[[], _T], local_call: Callable[[], _T]) -> _T:
        """Redis's answer; this process's own while Redis does not answer (nothing fails)."""
        if self._r is not None and time.monotonic() >= self._down_until:
            try:
                return redis_call()
            except redis.RedisError as exc:
                self._down_until = time.monotonic() + FALLBACK_S
                log.warning("quota broker: Redis did not answer (%s); this process counts "
                            "GitHub's quota on its own for %.0fs", type(exc).__name__,
                            FALLBACK_S)
        return local_call()

    def reserve(self, resource: Resource, cost: int = 1, peek: bool = False,
                only: str | None = None) -> Reservation | Wait:
        """Reserve `cost` on the token with the most headroom, or say how long to wait;
        `peek`: charge nothing (is a token usable now?); `only`: that token (its id) alone."""
        cost = max(1, min(cost, self._limits[resource]))
        limit = self._limits[resource]
        which = [i for i, tid in enumerate(self._ids) if only is None or tid == only]

        def shared() -> list[object]:
            names: list[str] = []
            for i in which:
                names += [keys.quota(resource.value, self._ids[i]), keys.quota_pause(self._ids[i])]
            return list(self._reserve(keys=names, args=[cost, limit, WINDOW_S, KEY_TTL_S,
                                                        "1" if peek else "0"]))

        out = self._shared(shared, lambda: self.local.reserve(
            resource.value, [self._ids[i] for i in which], cost, limit, peek))
        if _text(out[0]) == "reserved":
            i = which[int(_text(out[1])) - 1]
            return Reservation(resource, self._ids[i], cost, int(_text(out[2])),
                               self._tokens[i])
        return Wait(resource, int(_text(out[1])) / 1000, WaitReason(_text(out[2])))

    def position(self, tid: str) -> tuple[int, int]:
        """(1-based position of the token named `tid` among this broker's tokens, count)."""
        return self._ids.index(tid) + 1, len(self._ids)

    def acquire(self, resource: Resource, cost: int, stop: threading.Event,
                max_wait_s: float, deadline: float | None = None) -> Reservation:
        """`reserve`, waiting (sending nothing) while every token is spent or paused (at most
        `max_wait_s` at a time); Interrupted when `stop` is set during a wait; RateLimited
        instead of a wait that would pass `deadline` (time.monotonic())."""
        while True:
            got = self.reserve(resource, cost)
            if isinstance(got, Reservation):
                return got
            self._wait(got, stop, max_wait_s, deadline)

    def wait_ready(self, resource: Resource, stop: threading.Event, max_wait_s: float) -> None:
        """Wait until a token could be reserved, without reserving (after a RateLimited user
        was given back: the process waits holding no user)."""
        while isinstance(got := self.reserve(resource, 1, peek=True), Wait):
            self._wait(got, stop, max_wait_s, None)

    def _wait(self, got: Wait, stop: threading.Event, max_wait_s: float,
              deadline: float | None) -> None:
        wait = min(got.seconds + random.uniform(0.0, 0.5), max_wait_s)
        which = "the token" if len(self._tokens) == 1 else f"all {len(self._tokens)} tokens"
        if deadline is not None and time.monotonic() + wait > deadline:
            until = time.time() + got.seconds
            stamp = format_rfc3339(datetime.fromtimestamp(until, UTC))
            raise RateLimited(f"GitHub rate limit: {which} exhausted until {stamp}, past this "
                              "user's deadline (github.user_deadline_s)", until)
        log.warning("GitHub rate limit (%s): %s %s; waiting %.0fs (until %s UTC)",
                    got.resource.value, which, got.reason.value, wait,
                    time.strftime("%H:%M:%S", time.gmtime(time.time() + wait)))
        if stop.wait(wait):
            raise Interrupted(f"stopping while waiting for the {got.resource.value} quota")

    def record(self, reservation: Reservation, headers: Mapping[str, str]) -> int | None:
        """Correct the token's state from an answer's x-ratelimit-* headers; the remaining
        now stored (None: the answer had no usable headers)."""
        rate = RateHeaders.parse(headers)
        if rate is None:
            return None
        resource = rate.resource or reservation.resource
        key = keys.quota(resource.value, reservation.token_id)
        return int(self._shared(
            lambda: self._record(keys=[key], args=[rate.remaining, rate.reset, rate.limit,
                                                   KEY_TTL_S, WINDOW_S, reservation.cost]),
            lambda: self.local.record(resource.value, reservation.token_id, rate,
                                      reservation.cost)))

    def pause(self, reservation: Reservation, retry_after: str | None,
              max_s: float = MAX_PAUSE_S) -> Pause:
        """A secondary-limit answer: pause this token for every process (at most `max_s`,
        github.max_rate_wait_s: the longest wait the operator allows)."""
        longest = max(1, min(math.ceil(max_s), MAX_PAUSE_S))
        seconds = ""
        if retry_after is not None and retry_after.strip().isdigit():
            seconds = str(max(1, min(int(retry_after), longest)))
        tid = reservation.token_id
        out = self._shared(
            lambda: list(self._pause(keys=[keys.quota_pause(tid)], args=[seconds, longest])),
            lambda: self.local.pause(tid, int(seconds) if seconds else None, longest))
        pause = Pause(float(_text(out[0])), float(_text(out[1])))
        log.warning("GitHub secondary rate limit on token %s: paused %.0fs",
                    reservation.token_id[:15], pause.seconds)
        return pause

    def hold(self, reservation: Reservation, max_s: float = MAX_PAUSE_S) -> None:
        """After a rate-limit answer (its headers recorded): no process may send with this
        token again at once. The broker already waits when the headers said it is spent
        until a reset still ahead on its clock; otherwise (no usable headers, a reset already
        past, or the broker's clock ahead of GitHub's) the token is paused as for a
        secondary limit (60 s, doubling while they repeat, at most `max_s`): never a loop."""
        got = self.reserve(reservation.resource, reservation.cost, peek=True,
                           only=reservation.token_id)
        if isinstance(got, Reservation):
            self.pause(reservation, None, max_s)

    def limited(self, reservation: Reservation, status: int, headers: Mapping[str, str],
                body: bytes, max_s: float) -> bool:
        """Whether a 403/429 answer is a rate limit (REST's and GraphQL's one rule); when it
        is, every process now waits: `Retry-After` (bounded) pauses the token, `Remaining: 0`
        holds it (see `hold`), any other limit pauses it. False: a refusal (a 403 that is
        not a rate limit)."""
        if status not in (403, 429):
            return False
        retry_after = headers.get("Retry-After")
        if retry_after is not None:
            self.pause(reservation, retry_after, max_s)
        elif headers.get("X-RateLimit-Remaining") == "0":
            self.hold(reservation, max_s)
        elif status == 429 or any(word in body[:2000].lower() for word in _LIMIT_WORDS):
            self.pause(reservation, None, max_s)
        else:
            return False
        return True


    def refused(self, reservation: Reservation, status: int, body: bytes,
                api: str) -> TokenRefused:
        """The configuration error of a refused request (401, a 403 not a rate limit):
        the token named by its position, GitHub's reason bounded, never the token."""
        why = f"{status}{_reason(body)}"
        if reservation.token is None:
            return TokenRefused(f"GitHub's {api} refused a request without a token ({why}): "
                                "set GITHUB_TOKEN or GITHUB_TOKENS")
        i, n = self.position(reservation.token_id)
        return TokenRefused(f"{token_origin()} token {i} of {n} was refused by GitHub's "
                            f"{api} ({why})")


class LocalQuota:
    """The rules of the Lua scripts (quota_*.lua) on one process's own state: for
    `bulkbackup sync` (no Redis) and for a worker while Redis does not answer."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        # (resource, token id) -> remaining, reset, limit, reserved under an assumed window
        # (-1: the window is known from an answer)
        self._quota: dict[tuple[str, str], tuple[int, float, int, int]] = {}
        self._pauses: dict[str, tuple[float, float]] = {}  # token id -> until, length_s

    def reserve(self, resource: str, ids: Sequence[str], cost: int, default: int,
                peek: bool) -> list[object]:
        now = time.time()
        with self._mu:
            best: tuple[int, int, float, int] | None = None  # remaining, index, reset, assumed
            soonest, why = math.inf, "spent"
            for i, tid in enumerate(ids):
                until = self._pauses.get(tid, (0.0, 0.0))[0]
                if until > now:
                    soonest, why = (until, "paused") if until < soonest else (soonest, why)
                    continue
                left, reset, limit, assumed = self._quota.get((resource, tid),
                                                              (0, 0.0, default, 0))
                if reset <= now:
                    left, reset, assumed = limit, now + WINDOW_S, 0
                if left >= cost and (best is None or left > best[0]):
                    best = (left, i, reset, assumed)
                elif left < cost and reset < soonest:
                    soonest, why = reset, "spent"
            if best is None:
                return ["wait", max(1, math.ceil((soonest - now) * 1000)), why]
            left, i, reset, assumed = best
            if not peek:
                left -= cost
                limit = self._quota.get((resource, ids[i]), (0, 0.0, default, 0))[2]
                assumed = assumed + cost if assumed >= 0 else -1
                self._quota[(resource, ids[i])] = (left, reset, limit, assumed)
            return ["reserved", i + 1, left]

    def record(self, resource: str, tid: str, rate: RateHeaders, cost: int) -> int:
        reset = min(float(rate.reset), math.ceil(time.time() + WINDOW_S))
        with self._mu:
            left, old_reset, _, assumed = self._quota.get((resource, tid),
                                                          (rate.remaining, 0.0, 0, 0))
            same = assumed < 0 and abs(old_reset - reset) < 2
            remaining = min(left, rate.remaining) if same else rate.remaining
            remaining = max(0, remaining - max(0, assumed - cost))
            self._quota[(resource, tid)] = (remaining, reset, rate.limit, -1)
            return remaining

    def pause(self, tid: str, seconds: int | None, longest: int) -> list[object]:
        now = time.time()
        with self._mu:
            prev_until, prev_len = self._pauses.get(tid, (0.0, 0.0))
            length = float(seconds or DEFAULT_PAUSE_S)
            if prev_len and prev_until <= now < prev_until + prev_len:
                length = max(length, prev_len * 2)
            elif prev_len and now < prev_until:
                length = max(length, prev_len)
            length = min(length, longest)
            until = max(now + length, prev_until)
            self._pauses[tid] = (until, length)
            return [f"{until - now:.3f}", str(length)]


def _reason(body: bytes) -> str:
    """': <GitHub's message>' from an error answer, printable and bounded, or ''."""
    try:
        message = orjson.loads(body[:4000]).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if not isinstance(message, str):
        return ""
    clean = "".join(c for c in redact(message) if c.isprintable())[:200]
    return f": {clean}" if clean else ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
