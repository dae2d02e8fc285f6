"""The quota broker: one view of every token's GitHub quota, shared in Redis by every process.

Per token (named by a hash, never by the token) and resource (`core` for REST, `graphql`), it
keeps the last known `remaining` and `reset` from GitHub's `x-ratelimit-*` headers. Before a
request a process reserves its cost (`reserve`, one Lua call): the token with the most
headroom is picked and charged; when every token is spent (or paused) the answer is a `Wait`
until the earliest reset, and nothing is sent. `record` corrects the state from an answer's
headers; `pause` stops a token for every process after a secondary-limit answer
(Retry-After, else 60 s, doubling while they repeat). A token the broker knows nothing about
is assumed to have its full quota, so losing the keys loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from importlib import resources

import redis

from bulkbackup import keys
from bulkbackup.errors import Interrupted

log = logging.getLogger(__name__)

WINDOW_S = 3600  # GitHub's rate-limit window
KEY_TTL_S = 2 * WINDOW_S
MAX_PAUSE_S = 3600
NO_TOKEN_ID = "anonymous"  # noqa: S105 - the name of "no token", not a secret


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


class Broker:
    """The shared quota of `tokens` (this process's tokens; other processes may share them).

    `limits`: the points per window assumed for a token before any answer (GitHub: 5000).
    """

    def __init__(self, r: redis.Redis, tokens: Sequence[str],
                 limits: Mapping[Resource, int] | None = None) -> None:
        self._r = r
        values = [t for t in dict.fromkeys(tokens) if t]
        self._tokens: list[str | None] = list(values) or [None]
        self._ids = [token_id(t) for t in self._tokens]
        self._limits = {Resource.CORE: 5000, Resource.GRAPHQL: 5000, **(limits or {})}
        self._reserve = r.register_script(_script("quota_reserve.lua"))
        self._record = r.register_script(_script("quota_record.lua"))
        self._pause = r.register_script(_script("quota_pause.lua"))

    @property
    def token_ids(self) -> list[str]:
        return list(self._ids)

    def reserve(self, resource: Resource, cost: int = 1) -> Reservation | Wait:
        """Reserve `cost` on the token with the most headroom, or say how long to wait."""
        cost = max(1, min(cost, self._limits[resource]))
        names: list[str] = []
        for tid in self._ids:
            names += [keys.quota(resource.value, tid), keys.quota_pause(tid)]
        out = self._reserve(keys=names, args=[cost, self._limits[resource], WINDOW_S,
                                              KEY_TTL_S])
        kind = _text(out[0])
        if kind == "reserved":
            i = int(out[1]) - 1
            return Reservation(resource, self._ids[i], cost, int(out[2]), self._tokens[i])
        return Wait(resource, int(out[1]) / 1000, WaitReason(_text(out[2])))

    def acquire(self, resource: Resource, cost: int, stop: threading.Event,
                max_wait_s: float) -> Reservation:
        """`reserve`, waiting (sending nothing) while every token is spent or paused;
        raises Interrupted when `stop` is set during a wait."""
        while True:
            got = self.reserve(resource, cost)
            if isinstance(got, Reservation):
                return got
            wait = min(got.seconds + random.uniform(0.0, 0.5), max_wait_s)
            log.warning("GitHub %s quota: every token %s; waiting %.0fs", resource.value,
                        got.reason.value, wait)
            if stop.wait(wait):
                raise Interrupted(f"stopping while waiting for the {resource.value} quota")

    def record(self, reservation: Reservation, headers: Mapping[str, str]) -> int | None:
        """Correct the token's state from an answer's x-ratelimit-* headers; the remaining
        now stored (None: the answer had no usable headers)."""
        rate = RateHeaders.parse(headers)
        if rate is None:
            return None
        resource = rate.resource or reservation.resource
        key = keys.quota(resource.value, reservation.token_id)
        out = self._record(keys=[key], args=[rate.remaining, rate.reset, rate.limit, KEY_TTL_S])
        return int(out)

    def pause(self, reservation: Reservation, retry_after: str | None) -> Pause:
        """A secondary-limit answer: pause this token for every process."""
        seconds = ""
        if retry_after is not None and retry_after.strip().isdigit():
            seconds = str(max(1, min(int(retry_after), MAX_PAUSE_S)))
        out = self._pause(keys=[keys.quota_pause(reservation.token_id)],
                          args=[seconds, MAX_PAUSE_S])
        pause = Pause(float(_text(out[0])), float(_text(out[1])))
        log.warning("GitHub secondary rate limit on token %s: paused %.0fs",
                    reservation.token_id[:15], pause.seconds)
        return pause


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
