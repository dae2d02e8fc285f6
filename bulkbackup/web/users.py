"""Users for the pages: a page of `tracked`, a prefix search, one user, adding users.

A page costs one script call (a range from the cursor's rank, O(log N + page)) and one
pipelined round trip for its users' locks, summaries and saved scores. A search ignores case:
the store's case-insensitive search (store/casefold.py: a few prefix listings on S3) plus one
round trip for the login itself (logins.tracked_spelling). Calls block; the app runs them in
the threadpool.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from bulkbackup.archive.layout import UserCounts, short_reason
from bulkbackup.archive.metadata import ERROR, REPORTED_REPOS, SYNCD_REPOS
from bulkbackup.backup.results import error_kind
from bulkbackup.errors import StoreError
from bulkbackup.names import is_login
from bulkbackup.queue import keys, tracked
from bulkbackup.queue.logins import tracked_spelling
from bulkbackup.store import Head, Store
from bulkbackup.web.data import iso, number
from bulkbackup.web.detail import StoredUsers

log = logging.getLogger(__name__)
PAGE_SIZE = 50
PAGE_MAX = 200
TRACK_MAX = 1000
CURSOR_MAX_CHARS = 1024


class Status:
    """The contract's four statuses (`status` in the JSON)."""

    SYNCED = "synced"
    SYNCING = "syncing"
    UNSYNCED = "unsynced"
    ERROR = "error"


# A stored Error is shown up to this many characters (the page shortens it further).
ERROR_MAX_CHARS = 1000
# The error of a user whose object could not be read (the store down): Redis says only "yes".
REASON_UNKNOWN = "error (its reason could not be read from the store)"


# Not frozen: built for one answer and dropped, and a frozen dataclass's __init__ costs a
# page of 50 rows more than its JSON does.
@dataclass(slots=True)
class UserRow:
    login: str
    status: str
    badge: str
    last_sync: str | None
    syncd_repos: int | None
    reported_repos: int | None
    error: str | None  # the user object's Error (shortened); None: no error

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copies cost more than the page's Redis reads.
        return {"login": self.login, "status": self.status, "badge": self.badge,
                "last_sync": self.last_sync, "syncd_repos": self.syncd_repos,
                "reported_repos": self.reported_repos, "error": self.error}


def badge_of(status: str, error: str | None) -> str:
    """The page's finer badge (`badge` in the JSON): the status, or for `error` what the
    stored Error says (results.ErrorKind): `partial`, `gone` or `error`."""
    kind = error_kind(error or "") if status == Status.ERROR else None
    return kind.value if kind is not None else status


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's score and `tracked` member (ties are ordered by
    member). A member that is not a valid login's (put there by hand or by an older version)
    still ends a page: it is skipped as a row, never as a place to go on from."""

    score: float
    member: str

    def score_text(self) -> str:
        """The score as the page script and ZCOUNT read it."""
        return "inf" if self.score == math.inf else "-inf" if self.score == -math.inf else (
            repr(int(self.score)) if self.score == int(self.score) else repr(self.score))

    def encode(self) -> str:
        s = self.score_text()
        login = keys.login_of(self.member)
        if self.member == keys.member(login) and is_login(login):
            return f"{s}_{login}"
        raw = base64.urlsafe_b64encode(self.member.encode("utf-8", "surrogateescape"))
        return f"{s}~{raw.decode().rstrip('=')}"

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """None for anything that is not a cursor this server made."""
        if len(text) > CURSOR_MAX_CHARS:
            return None
        cut = min((i for i in (text.find("_"), text.find("~")) if i >= 0), default=-1)
        if cut < 0:
            return None
        head, sep, rest = text[:cut], text[cut], text[cut + 1:]
        try:
            score = float(head)
        except ValueError:
            return None
        if score != score or head.strip() != head:
            return None
        if sep == "_":
            return cls(score, keys.member(rest)) if is_login(rest) else None
        try:
            member = base64.urlsafe_b64decode(rest + "=" * (-len(rest) % 4)).decode(
                "utf-8", "surrogateescape")
        except ValueError:
            return None
        return cls(score, member) if member else None


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
            cursor.score_text(), cursor.member, limit]
        flat = self._page(keys=[keys.TRACKED], args=args)
        pairs = [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        rows = self.rows([(keys.login_of(m), s) for m, s in pairs if m.startswith(
            keys.MEMBER_PREFIX)], store)
        # The next page starts after the last member read, valid or not: an invalid one is
        # skipped, never the end of the list.
        nxt = Cursor(pairs[-1][1], pairs[-1][0]) if len(pairs) == limit else None
        return rows, nxt

    def search(self, prefix: str, limit: int, store: Store | None, after: str = ""
               ) -> tuple[list[UserRow], str | None, bool]:
        """Users whose login starts with ``prefix`` ignoring case, ordered by login (lower
        case), after the lowercased login ``after``: (rows, the next page's cursor, whether
        more match). From the search index (keys.SEARCH: O(log N + page)) when it is whole;
        else one page from the store (``more``: type more)."""
        folded, start = prefix.lower(), after or prefix.lower()
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(keys.SEARCH_WHOLE)
        # Logins are ASCII: chr(0x7f) sorts after every character a login can hold.
        pipe.zrangebylex(keys.SEARCH, f"({start}" if after else f"[{start}",
                         f"[{folded}\x7f", start=0, num=limit + 1)
        whole, found = pipe.execute()
        if not whole:
            if after:  # a cursor of an index since lost: the store's one page was shown
                return [], None, False
            if store is None:
                raise StoreError("the store does not answer (and the search index is not built)")
            rows, more = self._search_store(prefix, limit, store)
            return rows, None, more
        lowered = [x.decode() if isinstance(x, bytes) else str(x) for x in found]
        page = [x for x in lowered[:limit] if is_login(x)]
        nxt = lowered[limit - 1] if len(lowered) > limit else None
        spellings = self.r.hmget(keys.LOGINS, page) if page else []
        logins = [_spelled(low, sp) for low, sp in zip(page, spellings, strict=True)]
        scores = self.r.zmscore(keys.TRACKED, [keys.member(x) for x in logins]) if logins else []
        rows = self.rows(list(zip(logins, scores, strict=True)), store)
        return rows, nxt, nxt is not None

    def _search_store(self, prefix: str, limit: int, store: Store
                      ) -> tuple[list[UserRow], bool]:
        """Before the index is whole: the store's listings (the local store reads its whole
        top folder), plus the login itself when it is tracked but not stored yet."""
        logins, more = store.top_ignoring_case(prefix, limit)
        spelled = tracked_spelling(self.r, prefix)
        if spelled is not None and spelled not in logins:
            logins = sorted([spelled, *logins])[:limit]
        scores = self.r.zmscore(keys.TRACKED, [keys.member(x) for x in logins]) if logins else []
        return self.rows(list(zip(logins, scores, strict=True)), store), more

    def rows(self, users: list[tuple[str, float | None]], store: Store | None) -> list[UserRow]:
        """One pipelined round trip of three commands: the users' locks (MGET), summaries
        (with their errors' reasons: UserCounts) and scores before a claim (HMGET). The store
        is read only for a synced user without a summary (Redis lost it, or an older version
        wrote it without the reason): its object's HEAD (in parallel, reused a while: see
        StoredUsers.heads)."""
        users = [(login, score) for login, score in users if is_login(login)]
        if not users:
            return []
        logins = [login for login, _ in users]
        members = [keys.member(login) for login in logins]
        pipe = self.r.pipeline(transaction=False)
        pipe.mget([keys.lock(m) for m in members])
        pipe.hmget(keys.SYNCD, logins)
        pipe.hmget(keys.CLAIMS, members)
        locked, summaries, before = pipe.execute()
        scores = [number(saved) if score == math.inf and saved is not None else score
                  for (_, score), saved in zip(users, before, strict=True)]  # parked: saved
        counts = [_counts(text) for text in summaries]
        unknown = [login for login, score, c in zip(logins, scores, counts, strict=True)
                   if score is not None and score > -math.inf and (
                       c is None or (c.error and c.reason is None))]
        heads = self.stored.heads(store, unknown) if store is not None and unknown else {}
        return [_row(login, score, lock is not None, c, heads.get(login) if heads else None)
                for login, score, lock, c in zip(logins, scores, locked, counts, strict=True)]

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
        ``user``, with the page's extras; None for a user unknown to both. With Redis down,
        what the store knows (``unavailable`` names Redis); RedisError when it knows nothing."""
        try:
            queue: tuple[Any, ...] | None = self._queue(login)
        except redis.RedisError as exc:
            log.warning("redis: %s (the user page shows the store only)", exc)
            queue = None
        user, descriptions = self.stored.get(store, login)
        if queue is None and user is None:
            raise redis.ConnectionError("redis unavailable and the user is not stored")
        score, locked, summary = queue or (None, False, None)
        if user is None:
            if score is None:
                return None
            user = {"login": login, "last_sync": None, "syncd_repos": None,
                    "reported_repos": None, "error": None, "repositories": []}
        if queue is None:  # the store alone: synced at its last sync, or never
            score = -math.inf if user["last_sync"] is None else None
        stored = user["last_sync"] is not None
        row = _row(login, score, bool(locked), UserCounts.decode(summary), None,
                   stored_error=user["error"] if stored else None, stored=stored)
        return {"user": user, "status": row.status, "badge": row.badge,
                "score_sync": row.last_sync, "descriptions": descriptions,
                "unavailable": [] if queue is not None else ["redis"]}

    def _queue(self, login: str) -> tuple[float | None, bool, str | None]:
        """The user's score (its last sync, the saved one while claimed), lock, summary."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zscore(keys.TRACKED, keys.member(login))
        pipe.exists(keys.lock(keys.member(login)))
        pipe.hget(keys.SYNCD, login)
        pipe.hget(keys.CLAIMS, keys.member(login))
        score, locked, summary, before = pipe.execute()
        if score == math.inf and before is not None:
            score = number(before)
        return None if score is None else float(score), bool(locked), summary


def _row(login: str, score: float | None, locked: bool, counts: UserCounts | None,
         head: Head | None, stored_error: str | None = None, stored: bool = False) -> UserRow:
    """A user's row from Redis's summary (``counts``), overridden by what its stored object
    says (``head``, or ``stored_error`` for a user described from the store)."""
    syncd = counts.syncd if counts else None
    reported: int | None = counts.reported if counts else None
    error = (counts.reason or REASON_UNKNOWN) if counts and counts.error else None
    if head is not None:
        syncd = _digits(head.get(SYNCD_REPOS))
        reported = _digits(head.get(REPORTED_REPOS))
        error = short_reason(head.get(ERROR)) or None
    elif stored:
        error = (stored_error or "")[:ERROR_MAX_CHARS] or None
    if locked:
        status = Status.SYNCING
    elif score == -math.inf or (score is None and not stored):
        status = Status.UNSYNCED
    elif error:
        status = Status.ERROR
    else:
        status = Status.SYNCED
    last = iso(score) if score is not None else None
    return UserRow(login, status, badge_of(status, error), last, syncd, reported, error)


# Summaries repeat (most users' are a few small counts, no reason): each short one is decoded
# once and kept (the last _COUNTS_KEPT); a long one (with an error's reason) is not.
# Shared: a UserCounts is never changed.
_COUNTS_KEPT = 8192
_COUNTS_KEPT_CHARS = 40


def _counts(text: str | None) -> UserCounts | None:
    """UserCounts.decode(text), from what was seen when it was."""
    if text is None:
        return None
    return _short_counts(text) if len(text) <= _COUNTS_KEPT_CHARS else UserCounts.decode(text)


@functools.lru_cache(maxsize=_COUNTS_KEPT)
def _short_counts(text: str) -> UserCounts | None:
    return UserCounts.decode(text)


def _spelled(lowered: str, indexed: object) -> str:
    """A login's spelling from the logins index (keys.LOGINS), else its lowercase form."""
    if isinstance(indexed, bytes):
        indexed = indexed.decode("ascii", "replace")
    if isinstance(indexed, str) and is_login(indexed) and indexed.lower() == lowered:
        return indexed
    return lowered


def _digits(text: str) -> int | None:
    """A count from stored metadata; unknown past 18 digits (JSON numbers are 64-bit)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
