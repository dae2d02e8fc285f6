"""What the pages read from Redis and the store: totals, rates, freshness, workers.

Every figure costs a bounded number of Redis commands whatever the number of users (ZCARD,
ZCOUNT ranges, a few hashes): nothing here scans `tracked` or the store. Calls block; the app
runs them in Starlette's threadpool.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bulkbackup.config import EventsSettings, Settings
from bulkbackup.errors import ConfigError, StoreError
from bulkbackup.queue import keys
from bulkbackup.queue.connection import connect, server_time
from bulkbackup.store import Store, open_store
from bulkbackup.timeutil import format_epoch

DAY_S = 86400
# (name, youngest age, oldest age) of the freshness buckets, by last-sync age.
FRESHNESS = (("lt_1d", 0, DAY_S), ("lt_7d", DAY_S, 7 * DAY_S),
             ("lt_30d", 7 * DAY_S, 30 * DAY_S), ("older", 30 * DAY_S, None))
RATE_WINDOWS_MIN = (1, 15, 60)
WORKERS_MAX = 1000
# How long a store check (and a failed store opening) is remembered.
STORE_CHECK_S = 5.0
# A key that can never be an object (not a login): probing it answers "nothing" quickly.
PROBE_KEY = "%healthz"


@dataclass(frozen=True)
class Stats:
    tracked: int
    never_synced: int
    due: int
    claimed: int
    synced: int
    errors: int | None
    repos: int | None
    bytes: int | None
    stats_at: int | None
    rates: dict[str, dict[str, float]]
    users_per_minute: list[int]  # the last 60 minutes, oldest first (the current one last)
    freshness: dict[str, int]
    last_run: dict[str, Any]
    events: EventsFigures
    # The last stats pass's counts of wikis, gists, LFS objects, release lists and assets.
    more_than_git: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("users_per_minute")
        out["series"] = {"users_per_minute": self.users_per_minute}
        out["events"] = self.events.to_json()
        return out


@dataclass(frozen=True)
class EventsFigures:
    """Where `bulkbackup events` stands (keys.EVENTS_STATUS, DESIGN.md "Events"). Before any
    hour is read, ``last_hour``, ``last_hour_start_s``, ``read_at_s`` and ``lag_s`` are None
    (the page says "events not read", `/metrics` leaves their gauges out)."""

    last_hour: str | None  # the newest hour read whole, by name (`2026-11-01-15`)
    last_hour_start_s: int | None
    read_at_s: int | None  # when that hour was read
    lag_s: int | None  # now minus the end of that hour: grows while no newer hour is read
    hours: int  # hours read whole, ever
    gaps: int  # hours skipped after events.gap_hours
    events: int  # lines read in those hours
    marks: int  # changes that marked an owner
    bad_lines: int
    marked_due: int  # owners marked now, waiting for a sync
    needs_listing: int  # of them, those whose events need a listing

    @property
    def read(self) -> bool:
        return self.last_hour is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"read": self.read, "last_hour": self.last_hour,
                               "last_hour_start": _iso(self.last_hour_start_s),
                               "read_at": _iso(self.read_at_s)}
        for f in dataclasses.fields(self):
            if f.name not in ("last_hour", "last_hour_start_s", "read_at_s"):
                out[f.name] = getattr(self, f.name)
        return out


@dataclass
class Backend:
    """The server's Redis client and store, shared by the threadpool's threads."""

    settings: Settings
    r: redis.Redis = field(init=False)
    _store: Store | None = field(default=None, init=False)
    _store_error: str = field(default="", init=False)
    _checked_at: float = field(default=-1e9, init=False)
    _mu: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.r = connect(dataclasses.replace(
            self.settings.redis, socket_timeout_s=min(self.settings.redis.socket_timeout_s, 5.0)))

    def store(self) -> Store:
        """The store, opened on first use and again after a failed opening (at most every
        STORE_CHECK_S). Never creates a bucket or a folder: serve only reads."""
        with self._mu:
            if self._store is not None:
                return self._store
            if time.monotonic() - self._checked_at < STORE_CHECK_S and self._store_error:
                raise StoreError(self._store_error)
            self._checked_at = time.monotonic()
            try:
                # Read-only: a missing bucket or folder is reported, never created.
                self._store = open_store(self.settings.store, threads=8, create=False)
            except (StoreError, ConfigError) as exc:  # missing now, perhaps back later
                self._store_error = str(exc)
                raise StoreError(str(exc)) from None
            self._store_error = ""
            return self._store

    def fresh_store(self) -> Store | None:
        """The open store when its last check is recent and found it answering; else None
        (then ask store_problem()). No I/O: cheap enough for the event loop."""
        with self._mu:
            if (self._store is not None and not self._store_error
                    and time.monotonic() - self._checked_at < STORE_CHECK_S):
                return self._store
        return None

    def store_problem(self) -> str:
        """'' when the store answers (checked at most every STORE_CHECK_S), else why not."""
        with self._mu:
            if time.monotonic() - self._checked_at < STORE_CHECK_S:
                return self._store_error
        try:
            store = self.store()
            root = getattr(store, "root", None)
            if isinstance(root, Path):
                if not root.is_dir():
                    raise StoreError(f"store folder {root} does not exist")
                store.head(PROBE_KEY)
            else:
                # One listing request: unlike a HEAD of a missing key, it fails when the
                # bucket itself is gone.
                next(iter(store.list_top(PROBE_KEY)), None)
            problem = ""
        except StoreError as exc:
            problem = str(exc).splitlines()[0][:300] if str(exc) else "store error"
        with self._mu:
            self._store_error, self._checked_at = problem, time.monotonic()
        return problem

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self.r.close()


def server_now(r: redis.Redis) -> float:
    return server_time(r)


def stats(r: redis.Redis, full_pass_days: float = EventsSettings.full_pass_days) -> Stats:
    """Every figure of the dashboard in two pipelined round trips.

    Due: before any events hour is read, users below the last run's start (what a run
    started now would do first); once events are read, claims.py's rule for a run starting
    now: users not listed in full for ``full_pass_days`` (the never synced among them) plus
    the owners marked by events, each an O(log N) count (a marked user also listed too long
    ago counts twice, as in Claimer.remaining)."""
    pipe = r.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(keys.LAST_RUN)
    pipe.hmget(keys.LAST_STATS, "json", "at")
    pipe.hgetall(keys.EVENTS_STATUS)
    (sec, usec), last_run, (last_stats, stats_at), events_status = pipe.execute()
    now = float(sec) + usec / 1e6
    since = _float(last_run.get("started_at"))
    out = _counts(r, now, since, full_pass_days)
    n_tracked, never, due, claimed, unlisted, marked, listing = (int(x) for x in out[:7])
    fresh = [int(x) for x in out[7:7 + len(FRESHNESS)]]
    buckets = [[_int(v) or 0 for v in row] for row in out[7 + len(FRESHNESS):]]
    report = _json(last_stats)
    if events_status:  # claims.py: once events are read, only these are due
        due = unlisted + marked
    return Stats(
        tracked=n_tracked, never_synced=never, due=due, claimed=claimed,
        synced=n_tracked - never,
        errors=_dig(report, "users", "with_errors"),
        repos=_dig(report, "repositories", "archived"),
        bytes=_sum(_dig(report, "bytes", "bundles"), _dig(report, "bytes", "zips"),
                   _dig(report, "bytes", "increments") or 0),
        stats_at=_int(stats_at) if report else None,
        rates=_rates(buckets, now),
        users_per_minute=[b[0] for b in buckets[1:]],
        freshness={"never": never, **{name: n for (name, _, _), n in zip(FRESHNESS, fresh,
                                                                         strict=True)}},
        last_run=_last_run(last_run),
        events=_events(events_status, now, marked, listing),
        more_than_git={k: v for k in MORE_THAN_GIT
                       if (v := _dig(report, "more_than_git", k)) is not None},
    )


MORE_THAN_GIT = ("wikis", "gists", "lfs_objects", "release_lists", "assets")


def _events(status: dict[Any, Any], now: float, marked: int, listing: int) -> EventsFigures:
    """keys.EVENTS_STATUS read as figures; anything that is not a number is unknown."""
    raw = {_text(k): v for k, v in status.items()}
    start = _int(raw.get("last_hour_start"))
    name = raw.get("last_hour")
    last_hour = _text(name)[:40] if name is not None and start is not None else None
    return EventsFigures(
        last_hour=last_hour, last_hour_start_s=start if last_hour else None,
        read_at_s=_int(raw.get("read_at")) if last_hour else None,
        lag_s=_int(max(int(now) - (start + 3600), 0)) if start is not None and last_hour else None,
        hours=_int(raw.get("hours")) or 0, gaps=_int(raw.get("gaps")) or 0,
        events=_int(raw.get("events")) or 0, marks=_int(raw.get("marks")) or 0,
        bad_lines=_int(raw.get("bad_lines")) or 0, marked_due=marked, needs_listing=listing)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _counts(r: redis.Redis, now: float, since: float | None,
            full_pass_days: float) -> list[Any]:
    """The second round trip of `stats`: counts (each O(log N)), then the rate buckets."""
    minute = int(now // 60)
    pipe = r.pipeline(transaction=False)
    pipe.zcard(keys.TRACKED)
    pipe.zcount(keys.TRACKED, "-inf", "-inf")
    pipe.zcount(keys.TRACKED, "-inf", f"({since}" if since else "-inf")
    pipe.zcard(keys.LEASES)
    pipe.zcount(keys.TRACKED, "-inf", f"({now - full_pass_days * DAY_S!r}")
    pipe.zcard(keys.EVENTS_DUE)
    pipe.scard(keys.EVENTS_LISTING)
    for _, young, old in FRESHNESS:
        pipe.zcount(keys.TRACKED, "(-inf" if old is None else now - old,
                    f"({now - young}" if young else "(inf")
    for m in range(minute - 60, minute + 1):
        pipe.hmget(keys.rate(m), "users", "repos", "bytes")
    return list(pipe.execute())


def _rates(buckets: list[list[int]], now: float) -> dict[str, dict[str, float]]:
    """Per-minute rates over the last N minutes: the N complete minutes before the current
    one plus the current one so far, divided by the time they span (never inflated by a
    minute that has just begun)."""
    into = now % 60
    out: dict[str, dict[str, float]] = {}
    for n in RATE_WINDOWS_MIN:
        window = buckets[-(n + 1):]
        span_min = (n * 60 + into) / 60
        out[f"{n}m"] = {what: round(sum(b[i] for b in window) / span_min, 2)
                        for i, what in enumerate(("users", "repos", "bytes"))}
    return out


def _last_run(raw: dict[str, str]) -> dict[str, Any]:
    if not raw:
        return {}
    out: dict[str, Any] = {}
    for name in ("started_at", "ended_at"):
        value = _float(raw.get(name))
        out[name] = _iso(value) if value else None
    for name in ("users", "repos", "archived", "bytes", "errors", "deferred", "procs"):
        out[name] = _int(raw.get(name))
    out["elapsed_s"] = _float(raw.get("elapsed_s"))
    out["users_per_s"] = _float(raw.get("users_per_s"))
    return out


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    since: str | None
    seen: str | None
    users_per_min: int
    repos_per_min: int
    bytes_per_min: int
    users: int
    token: str = ""  # a remote worker's token name (one row per token); "" for a local one


def workers(r: redis.Redis) -> list[WorkerRow]:
    """Worker processes whose heartbeat (see LockKeeper.heartbeat) is under a minute old."""
    now = time.time()
    ids = r.zrange(keys.WORKERS, now - keys.WORKER_TTL_S, "+inf", byscore=True, offset=0,
                   num=WORKERS_MAX)
    if not ids:
        return []
    rows = []
    for wid, raw in zip(ids, r.mget([keys.worker(str(i)) for i in ids]), strict=True):
        doc = _json(raw)
        if not doc:
            continue  # the figures expired between the two reads
        rows.append(WorkerRow(
            id=str(wid)[:200], host=str(doc.get("host", ""))[:200],
            since=_iso(_float(doc.get("since"))), seen=_iso(_float(doc.get("seen"))),
            users_per_min=_int(doc.get("users_per_min")) or 0,
            repos_per_min=_int(doc.get("repos_per_min")) or 0,
            bytes_per_min=_int(doc.get("bytes_per_min")) or 0,
            users=_int(doc.get("users")) or 0, token=str(doc.get("token") or "")[:100]))
    rows.sort(key=lambda w: (w.host, w.id))
    return rows


def iso(epoch: float | None) -> str | None:
    return _iso(epoch)


def duration(seconds: object) -> str:
    """A lag for people: `2 d 3 h`, `3 h 5 min`, `5 min`, `40 s`; "-" when unknown."""
    s = _int(seconds)
    if s is None or s < 0:
        return "-"
    days, rest = divmod(s, DAY_S)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{secs} s"


def _iso(epoch: float | None) -> str | None:
    """The time in ISO 8601; None (shown as unknown) outside years 1970-9999."""
    return None if epoch is None else format_epoch(epoch)


def _json(raw: object) -> dict[str, Any]:
    if not isinstance(raw, str | bytes) or not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _dig(doc: dict[str, Any], *path: str) -> int | None:
    value: Any = doc
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return _int(value)


def _sum(*values: int | None) -> int | None:
    return None if any(v is None for v in values) else _int(sum(v or 0 for v in values))


# Every number a page shows from Redis goes through _int or _float: anything else than a
# finite number in range (a count above what a signed 64-bit integer holds, 1e300, "inf") is
# None, shown as unknown, never a 500 (JSON encoders refuse integers past 64 bits).
INT_MAX = 2**63 - 1


def _int(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if -INT_MAX <= value <= INT_MAX else None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if text.isdigit() and len(text) <= 19:  # exact, where a float would round
        return _int(int(text))
    f = _float(text)
    return int(f) if f is not None and -INT_MAX <= f <= INT_MAX else None


def _float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if len(text) > 100:  # int("9" * 5000) is slow, and no figure is that long
        return None
    try:
        f = float(text)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def number(value: object) -> float | None:
    """A figure read from Redis for a page: finite, or None (unknown)."""
    return _float(value)
