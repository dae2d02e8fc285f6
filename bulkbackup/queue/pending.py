"""Repositories pending verify: those a run's worker committed an increment to since their
last verify (`keys.VERIFY_PENDING`, a sorted set by commit time). `verify --sample N` takes
the oldest of them before its random sample, so what was committed last is checked first
(README "Incremental archives"). Every operation is O(log N); the set is bounded."""

from __future__ import annotations

from importlib import resources

import redis

from bulkbackup.errors import InvalidName
from bulkbackup.names import check_archive_name, check_login
from bulkbackup.queue import keys


def add(r: redis.Redis, login: str, repo: str, when_s: float) -> None:
    """``login/repo`` committed at ``when_s``; the oldest beyond the bound are dropped."""
    pipe = r.pipeline(transaction=True)
    pipe.zadd(keys.VERIFY_PENDING, {f"{login}/{repo}": when_s})
    pipe.zremrangebyrank(keys.VERIFY_PENDING, 0, -(keys.VERIFY_PENDING_MAX + 1))
    pipe.execute()


def oldest(r: redis.Redis, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` pending repositories, oldest commit first, as (login, repo); a member
    that is not a valid name (damage) is dropped."""
    out: list[tuple[str, str]] = []
    raws = r.zrange(keys.VERIFY_PENDING, 0, n - 1) if n > 0 else []
    for raw in raws:
        if not isinstance(raw, (bytes, str)):
            continue  # zrange without scores gives members only
        member = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        login, _, repo = member.partition("/")
        try:
            out.append((check_login(login), check_archive_name(repo)))  # wikis too
        except InvalidName:
            r.zrem(keys.VERIFY_PENDING, raw)
    return out


def done(r: redis.Redis, login: str, repo: str, since_s: float) -> None:
    """A verify that began at ``since_s`` recorded its result for ``login/repo``: no longer
    pending, unless it was committed again meanwhile."""
    r.eval(_DONE, 1, keys.VERIFY_PENDING, f"{login}/{repo}", repr(since_s))


_DONE = resources.files("bulkbackup").joinpath("lua", "pending_done.lua").read_text("utf-8")
