"""`bulkbackup events`: hours read oldest first, their marks written to Redis, each hour
remembered once read whole; `--follow` waits for each next hour and never ends.

An hour is one of: READ (marks written, remembered), ALREADY_READ (remembered before: nothing
changes), UNNAMED (a file whose name is no hour: read, not remembered), WAITING (not published
yet), GAP (missing past events.gap_hours: reported, skipped), FAILED (truncated, corrupt, an
HTTP error: not remembered; exit 1, or tried again by --follow until it is a gap).
"""

from __future__ import annotations

import enum
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

import redis

from bulkbackup.config import Settings
from bulkbackup.errors import UsageError, one_line
from bulkbackup.events import hours
from bulkbackup.events.lines import HourCounts, marks_of
from bulkbackup.events.rules import Change
from bulkbackup.events.source import HourFailed, HourFetcher, open_path
from bulkbackup.queue import events as queue_events
from bulkbackup.queue.connection import Scripts, connect
from bulkbackup.timeutil import now as utc_now


class HourState(enum.Enum):
    READ = "read"
    ALREADY_READ = "already read"
    UNNAMED = "read (not remembered: no hour in its name)"
    WAITING = "not published yet"
    GAP = "skipped"
    FAILED = "failed"


@dataclass
class HourResult:
    label: str
    state: HourState
    counts: HourCounts | None = None
    figures: queue_events.MarkFigures | None = None
    lag_s: float | None = None
    reason: str = ""


OnHour = Callable[[HourResult], None]


class EventsReader:
    """Reads hours into marks for one command; ``on_hour`` hears of every hour as it ends."""

    def __init__(self, settings: Settings, track_new: bool, on_hour: OnHour,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._settings = settings
        self._track_new = track_new
        self._on_hour = on_hour
        self._clock = clock
        self.r: redis.Redis = connect(settings.redis)
        self._scripts = Scripts(self.r)
        self.failed = 0

    def _report(self, result: HourResult) -> HourResult:
        self.failed += result.state is HourState.FAILED
        self._on_hour(result)
        return result

    def _read(self, lines: BinaryIO, hour: datetime | None, label: str) -> HourResult:
        """Marks of one hour's lines, then the hour remembered (when it has a name)."""
        counts = HourCounts()
        marks = queue_events.DueMarks(self.r, self._scripts, self._track_new)
        now = self._clock()
        marks.score_s = (hour + hours.HOUR if hour else now).timestamp()
        try:
            for mark in marks_of(lines, counts):
                marks.add(mark.owner, mark.repo, mark.change is Change.NEEDS_LISTING)
        except (EOFError, OSError, zlib.error) as exc:
            marks.flush()  # the events read are real: their marks stand
            raise HourFailed(f"{label}: truncated or corrupt: {one_line(exc, 200)}") from None
        marks.flush()
        if hour is None:
            return HourResult(label, HourState.UNNAMED, counts, marks.figures)
        lag_s = hours.lag_s(hour, self._clock())
        done = queue_events.finish_hour(
            self.r, self._scripts, label, int(hour.timestamp()), int(self._clock().timestamp()),
            hours.name(hour + hours.HOUR),
            {"events": counts.lines, "marks": counts.marks, "bad_lines": counts.bad_lines})
        state = HourState.READ if done else HourState.ALREADY_READ
        return HourResult(label, state, counts, marks.figures, lag_s)

    def read_paths(self, paths: list[str]) -> None:
        """Each file (or `-`) in turn; one that fails does not stop the others."""
        for path in paths:
            hour = hours.of_file(path) if path != "-" else None
            label = hours.name(hour) if hour else path
            if hour is not None and queue_events.is_done(self.r, label):
                self._report(HourResult(label, HourState.ALREADY_READ))
                continue
            try:
                with open_path(path) as lines:
                    self._report(self._read(lines, hour, label))
            except HourFailed as exc:
                self._report(HourResult(label, HourState.FAILED, reason=str(exc)))

    def first_hour(self, given: datetime | None) -> datetime:
        """``--from``, else where reading stopped, else the hour before this one."""
        if given is not None:
            return given
        resume = hours.parse_name(queue_events.status(self.r).get("next_hour", ""))
        return resume or hours.floor(self._clock()) - hours.HOUR

    def read_hours(self, first: datetime, last: datetime | None, follow: bool) -> None:
        """The hours ``first``..``last`` (None: the newest published) of events.url; with
        ``follow``, then every next hour as it is published, forever."""
        if last is not None and last < first:
            raise UsageError(f"--to {hours.name(last)} is before --from {hours.name(first)}")
        fetcher = HourFetcher(self._settings.events)
        try:
            hour = first
            while last is None or hour <= last:
                if not self._one_hour(fetcher, hour, follow, explicit=last is not None):
                    return
                hour += hours.HOUR
        finally:
            fetcher.close()

    def _one_hour(self, fetcher: HourFetcher, hour: datetime, follow: bool,
                  explicit: bool) -> bool:
        """Read ``hour`` (waiting for it with ``follow``); False: stop reading here."""
        label = hours.name(hour)
        if queue_events.is_done(self.r, label):
            self._report(HourResult(label, HourState.ALREADY_READ))
            return True
        told: tuple[HourState, str] | None = None
        while True:
            result = self._try(fetcher.open(hour), hour, label)
            if result.state not in (HourState.WAITING, HourState.FAILED):
                self._report(result)
                return True
            # Missing past events.gap_hours: skipped. A hour that fails (truncated) fails the
            # command, but never --follow: it is tried again until it is that old.
            if self._overdue(hour) and (result.state is HourState.WAITING or follow):
                queue_events.record_gap(self.r, label, int(hour.timestamp()),
                                        hours.name(hour + hours.HOUR))
                self._report(HourResult(label, HourState.GAP,
                                        reason=result.reason or "not published"))
                return True
            if not follow:
                if result.state is HourState.WAITING and not explicit:
                    return False  # the newest published hour was read: done
                if result.state is HourState.WAITING:
                    result.state, result.reason = HourState.FAILED, f"{label}: not published"
                self._report(result)
                return False
            if told != (result.state, result.reason):
                told = (result.state, result.reason)
                self._report(result)  # once per hour and reason, not per try
            time.sleep(self._settings.events.poll_s)  # SIGINT/SIGTERM interrupt it

    def _try(self, opened: AbstractContextManager[BinaryIO | None], hour: datetime,
             label: str) -> HourResult:
        try:
            with opened as lines:
                if lines is None:
                    return HourResult(label, HourState.WAITING,
                                      lag_s=hours.lag_s(hour, self._clock()))
                return self._read(lines, hour, label)
        except HourFailed as exc:
            return HourResult(label, HourState.FAILED, reason=str(exc))

    def _overdue(self, hour: datetime) -> bool:
        gap = timedelta(hours=self._settings.events.gap_hours)
        return self._clock() > hour + hours.HOUR + gap

