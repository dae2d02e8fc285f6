"""Users for the pages: a page of `tracked`, a prefix search, one user, adding users.

A page costs one script call (a range from the cursor's rank, O(log N + page)) and one
pipelined round trip for its users' locks, summaries and saved scores. A search ignores case:
the store's case-insensitive search (store/casefold.py: a few prefix listings on S3) plus one
round trip for the login itself (logins.tracked_spelling). Calls block; the app runs them in
the threadpool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from bulkbackup import keys, tracked
from bulkbackup.logins import tracked_spelling
from bulkbackup.names import is_login
from bulkbackup.store import Store
from bulkbackup.store.base import ERROR, REPORTED_REPOS, SYNCD_REPOS
from bulkbackup.store.layout import UserCounts
from bulkbackup.web.data import iso
from bulkbackup.web.detail import StoredUsers

PAGE_SIZE = 50
PAGE_MAX = 200
TRACK_MAX = 1000


class Status:
    SYNCED = "synced"
    SYNCING = "syncing"
    UNSYNCED = "unsynced"
    ERROR = "error"


@dataclass(frozen=True)
class UserRow:
    login: str
    status: str
    last_sync: str | None
    syncd_repos: int | None
    reported_repos: int | None
    error: bool | None

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copies cost more than the page's Redis reads.
        return {"login": self.login, "status": self.status, "last_sync": self.last_sync,
                "syncd_repos": self.syncd_repos, "reported_repos": self.reported_repos,
                "error": self.error}


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's score and member (ties are ordered by member)."""

    score: float
    login: str

    def encode(self) -> str:
        s = "inf" if self.score == math.inf else "-inf" if self.score == -math.inf else (
            repr(int(self.score)) if self.score == int(self.score) else repr(self.score))
        return f"{s}_{self.login}"

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """None for anything that is not a cursor this server made."""
        head, sep, login = text[:80].partition("_")
        if not sep or len(text) > 80 or not is_login(login):
            return None
        try:
            score = float(head)
        except ValueError:
            return None
        if score != score or head.strip() != head:
            return None
        return cls(score, login)


def _script(r: redis.Redis) -> Any:
    text = resources.files("bulkbackup.web").joinpath("page.lua").read_text(encoding="utf-8")
    return r.register_script(text)


class Users:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._page = _script(r)
        self.stored = StoredUsers()

    def page(self, cursor: Cursor | None, limit: int, store: Store | None
             ) -> tuple[list[UserRow], Cursor | None]:
        """Users, newest sync first, after ``cursor``; and the cursor of the next page."""
        args = ["", "", limit] if cursor is None else [
            Cursor.encode(cursor).partition("_")[0], keys.member(cursor.login), limit]
        flat = self._page(keys=[keys.TRACKED], args=args)
        pairs = [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        rows = self.rows([(keys.login_of(m), s) for m, s in pairs if m.startswith(
            keys.MEMBER_PREFIX)], store)
        nxt = None
        if len(pairs) == limit:
            member, score = pairs[-1]
            login = keys.login_of(member)
            nxt = Cursor(score, login) if is_login(login) else None
        return rows, nxt

    def search(self, prefix: str, limit: int, store: Store) -> tuple[list[UserRow], bool]:
        """Users whose login starts with ``prefix`` ignoring case (the store's listings, plus
        the login itself when it is tracked but not stored yet), ordered by login; and
        whether there are more than ``limit``."""
        logins, more = store.top_ignoring_case(prefix, limit)
        spelled = tracked_spelling(self.r, prefix)
        if spelled is not None and spelled not in logins:
            logins = sorted([spelled, *logins])[:limit]
        scores = self.r.zmscore(keys.TRACKED, [keys.member(x) for x in logins]) if logins else []
        return self.rows(list(zip(logins, scores, strict=True)), store), more

    def rows(self, users: list[tuple[str, float | None]], store: Store | None) -> list[UserRow]:
        """One pipelined round trip of three commands: the users' locks (MGET), summaries
        and scores before a claim (HMGET)."""
        users = [(login, score) for login, score in users if is_login(login)]
        if not users:
            return []
        members = [keys.member(login) for login, _ in users]
        pipe = self.r.pipeline(transaction=False)
        pipe.mget([keys.lock(m) for m in members])
        pipe.hmget(keys.SYNCD, [login for login, _ in users])
        pipe.hmget(keys.CLAIMS, members)
        locked, summaries, before = pipe.execute()
        rows = []
        for i, (login, score) in enumerate(users):
            if score == math.inf and before[i] is not None:
                score = float(before[i])  # parked while claimed: its last sync is saved
            rows.append(_row(login, score, locked[i] is not None, summaries[i], store))
        return rows

    def spelling(self, login: str) -> str:
        """The spelling ``login``'s account is tracked under (logins ignore case); ``login``
        itself when it is not tracked (the store may still have it under that key), or when
        Redis does not answer: the store's pages and downloads do not need Redis."""
        try:
            return tracked_spelling(self.r, login) or login
        except redis.RedisError:
            return login

    def track(self, logins: list[str]) -> tuple[list[str], list[str]]:
        """(added, already tracked: as spelled in `tracked`, once each)."""
        added, existing = tracked.add_never_synced(self.r, logins)
        return added, list(dict.fromkeys(spelled for _, spelled in existing))

    def detail(self, login: str, store: Store) -> dict[str, Any] | None:
        """`show --json`'s object (or its empty form for a user tracked but not stored) under
        ``user``, with the page's extras; None for a user unknown to both."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zscore(keys.TRACKED, keys.member(login))
        pipe.exists(keys.lock(keys.member(login)))
        pipe.hget(keys.SYNCD, login)
        pipe.hget(keys.CLAIMS, keys.member(login))
        score, locked, summary, before = pipe.execute()
        user, descriptions = self.stored.get(store, login)
        if user is None and score is None:
            return None
        if user is None:
            user = {"login": login, "last_sync": None, "syncd_repos": None,
                    "reported_repos": None, "error": None, "repositories": []}
        if score == math.inf and before is not None:
            score = float(before)
        row = _row(login, None if score is None else float(score), bool(locked), summary, None,
                   has_error=bool(user["error"]) if user["last_sync"] else None)
        return {"user": user, "status": row.status, "score_sync": row.last_sync,
                "descriptions": descriptions}


def _row(login: str, score: float | None, locked: bool, summary: str | None,
         store: Store | None, has_error: bool | None = None) -> UserRow:
    counts = UserCounts.decode(summary)
    syncd = counts.syncd if counts else None
    reported: int | None = getattr(counts, "reported", None)
    error = counts.error if counts else has_error
    if counts is None and store is not None and score is not None and score > -math.inf:
        # No summary in Redis (lost, or written before summaries existed): the store knows.
        head = store.head(login)
        if head is not None:
            syncd = _digits(head.get(SYNCD_REPOS))
            reported = _digits(head.get(REPORTED_REPOS))
            error = bool(head.get(ERROR))
    if locked:
        status = Status.SYNCING
    elif score is None or score == -math.inf:
        status = Status.UNSYNCED
    elif error:
        status = Status.ERROR
    else:
        status = Status.SYNCED
    last = iso(score) if score is not None else None
    return UserRow(login, status, last, syncd, reported, error)


def _digits(text: str) -> int | None:
    return int(text) if text.isdigit() else None
