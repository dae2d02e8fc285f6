"""Listings handed over between `run` workers with their users (keys.listing; the worker's
side is run/listing_share.py). Values are opaque here (the worker's JSON); this module only
stores them for a while and takes them in one round trip for a claim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis

from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts

LEFT = "+"  # listing_take.lua: a listing is cached for this member, left in place


@dataclass(frozen=True)
class Cached:
    """What a claim found cached (see `take`)."""

    taken: dict[str, str] = field(default_factory=dict)  # member -> its listing, deleted
    left: frozenset[str] = frozenset()  # members with one cached beyond what was taken


def store(r: redis.Redis, listings: Mapping[str, bytes], ttl_s: int) -> None:
    """Cache each member's listing for ``ttl_s`` seconds (one round trip)."""
    pipe = r.pipeline(transaction=False)
    for member, data in listings.items():
        pipe.set(keys.listing(member), data, ex=ttl_s)
    pipe.execute()


def take(scripts: Scripts, members: Sequence[str], most: int) -> Cached:
    """The cached listings of the first ``most`` claimed ``members`` that have one, read and
    deleted, and which others have one (left cached): one round trip."""
    if not members:
        return Cached()
    got = scripts.listing_take(keys=[keys.listing(m) for m in members], args=[max(0, most)])
    taken: dict[str, str] = {}
    left: set[str] = set()
    for member, value in zip(members, got, strict=True):
        if value == LEFT:
            left.add(member)
        elif value:
            taken[member] = value if isinstance(value, str) else value.decode()
    return Cached(taken, frozenset(left))
