"""Redis's side of `bulkbackup events` (DESIGN.md "Events"): owners marked due by their
events, the hours read, and where reading stands. Every key is in keys.py.

For 100 M tracked users: a mark is O(log N) in Redis (events_mark.lua), marks travel in one
pipelined round trip per batch of events (never one per event), and what is held here is one
batch, each owner's repositories capped at keys.EVENTS_REFS_MAX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from bulkbackup.iterutil import chunks
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts
from bulkbackup.queue.tracked import TRACK_BATCH

# Events with a mark held before they are sent (one pipeline), and owners per script call
# (its arguments stay a few thousand).
BATCH_EVENTS = 5000
OWNERS_PER_CALL = 500


@dataclass
class _Owner:
    listing: bool = False
    repos: set[str] = field(default_factory=set)


@dataclass
class MarkFigures:
    """What the marks did: owners marked (tracked), of them newly due, owners skipped because
    they are not tracked, owners tracked by --track-new."""

    marked: int = 0
    newly_due: int = 0
    untracked: int = 0
    tracked_new: int = 0


class DueMarks:
    """Collects marks and writes them a batch at a time; `flush` before an hour is done."""

    def __init__(self, r: redis.Redis, scripts: Scripts, track_new: bool,
                 batch_events: int = BATCH_EVENTS) -> None:
        self._r = r
        self._scripts = scripts
        self._track_new = track_new
        self._batch_events = batch_events
        self._owners: dict[str, _Owner] = {}
        self._held = 0
        self.score_s = 0.0  # a new mark's score: the end of the hour being read
        self.figures = MarkFigures()
        self._load_scripts()  # EVALSHA below: loaded before the first batch

    def add(self, owner: str, repo: str, needs_listing: bool) -> None:
        """``owner``'s repository ``repo`` changed: its refs moved, or it needs a listing.
        Names are validated by the caller (names.py)."""
        entry = self._owners.setdefault(owner, _Owner())
        if needs_listing:
            entry.listing = True
            entry.repos.clear()
        elif not entry.listing:
            entry.repos.add(repo)
            if len(entry.repos) > keys.EVENTS_REFS_MAX:
                entry.listing = True
                entry.repos.clear()
        self._held += 1
        if self._held >= self._batch_events:
            self.flush()

    def flush(self) -> None:
        """Send what is held in one round trip (track.lua first with --track-new)."""
        if not self._owners:
            return
        owners = list(self._owners.items())
        self._owners, self._held = {}, 0
        commands: list[bytes] = []
        if self._track_new:
            for logins in chunks([login for login, _ in owners], TRACK_BATCH):
                commands.append(_resp("EVALSHA", self._scripts.track.sha, "3", keys.TRACKED,
                                      keys.LOGINS, keys.SEARCH, keys.MEMBER_PREFIX, "count",
                                      *logins))
        tracks = len(commands)
        score = repr(float(self.score_s))
        for part in chunks(owners, OWNERS_PER_CALL):
            args = [keys.MEMBER_PREFIX, score, str(keys.EVENTS_REFS_MAX), str(len(part))]
            for login, entry in part:
                args += [login, "1" if entry.listing else "0", str(len(entry.repos)),
                         *sorted(entry.repos)]
            commands.append(_resp(
                "EVALSHA", self._scripts.events_mark.sha, str(4 + len(part)), keys.TRACKED,
                keys.LOGINS, keys.EVENTS_DUE, keys.EVENTS_LISTING,
                *[keys.events_refs(login) for login, _ in part], *args))
        try:
            replies = self._send(commands)
        except redis.exceptions.NoScriptError:  # Redis restarted, or SCRIPT FLUSH: again
            self._load_scripts()
            replies = self._send(commands)
        self.figures.tracked_new += sum(int(n) for n in replies[:tracks])
        for marked, new, untracked in replies[tracks:]:
            self.figures.marked += int(marked)
            self.figures.newly_due += int(new)
            self.figures.untracked += int(untracked)

    def _load_scripts(self) -> None:
        for script in (self._scripts.track, self._scripts.events_mark):
            self._r.script_load(script.script)

    def _send(self, commands: list[bytes]) -> list[Any]:
        """``commands`` written at once, then their replies read (one round trip). Marks are
        idempotent: a batch cut short (NOSCRIPT) may be sent again whole."""
        pool = self._r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(commands, check_health=True)
            replies = [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # replies may be left unread: the connection is not reused
            raise
        finally:
            pool.release(conn)
        return replies


def _resp(*args: str) -> bytes:
    """One Redis command in RESP, packed in one pass (redis-py's packing, an argument at a
    time, cost more than reading the hour: queue/ingest.py packs its commands alike). Every
    argument is ASCII: names are validated (names.py), the rest are numbers and key names."""
    body = "".join([f"${len(a)}\r\n{a}\r\n" for a in args])
    return b"*%d\r\n" % len(args) + body.encode("ascii")


def is_done(r: redis.Redis, hour: str) -> bool:
    """Whether the hour named ``hour`` was read whole before."""
    return r.zscore(keys.EVENTS_HOURS, hour) is not None


def finish_hour(r: redis.Redis, scripts: Scripts, hour: str, start_s: int, read_at_s: int,
                next_hour: str, totals: dict[str, int]) -> bool:
    """Remember the hour as read, move the status, add ``totals`` (field -> count): all at
    once, and only the first time (False: it already was done; nothing changed)."""
    args: list[str | int] = [hour, start_s, read_at_s, next_hour]
    for name, count in totals.items():
        args += [name, count]
    done = scripts.events_hour(keys=[keys.EVENTS_HOURS, keys.EVENTS_STATUS], args=args)
    return bool(int(done))


def record_gap(r: redis.Redis, hour: str, start_s: int, next_hour: str) -> None:
    """The hour was skipped (missing past events.gap_hours): reading resumes after it. It is
    not remembered as read: named explicitly once published, it is read then."""
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.EVENTS_STATUS, mapping={"last_gap": hour})
    pipe.hincrby(keys.EVENTS_STATUS, "gaps", 1)
    pipe.execute()
    status = r.hget(keys.EVENTS_STATUS, "next_hour_start")
    if status is None or int(status) < start_s + 3600:
        r.hset(keys.EVENTS_STATUS, mapping={"next_hour": next_hour,
                                            "next_hour_start": start_s + 3600})


def status(r: redis.Redis) -> dict[str, str]:
    """Where reading stands (keys.EVENTS_STATUS), as text; empty when no hour was read."""
    raw = r.hgetall(keys.EVENTS_STATUS)
    return {_text(k): _text(v) for k, v in raw.items()}


def figures(r: redis.Redis, now_s: float) -> dict[str, object]:
    """For `stats`: the last hour read and how far behind ``now_s`` its end is (None before
    any), totals, and the owners marked due (of them, needing a listing). One round trip."""
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.EVENTS_STATUS)
    pipe.zcard(keys.EVENTS_DUE)
    pipe.scard(keys.EVENTS_LISTING)
    raw, due, listing = pipe.execute()
    status = {_text(k): _text(v) for k, v in raw.items()}
    start = status.get("last_hour_start")
    lag_s = max(now_s - (int(start) + 3600), 0) if start else None

    def num(name: str) -> int:
        return int(status.get(name, "0") or 0)

    return {"last_hour": status.get("last_hour"), "lag_s": None if lag_s is None else
            int(lag_s), "hours": num("hours"), "gaps": num("gaps"), "events": num("events"),
            "bad_lines": num("bad_lines"), "marked_due": int(due),
            "needs_listing": int(listing)}


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
