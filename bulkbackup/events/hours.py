"""GH Archive's hour names: `YYYY-MM-DD-H` (UTC, the hour without a leading zero), the file
`<url>/<name>.json.gz` holding the events created in that hour."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from bulkbackup.errors import UsageError
from bulkbackup.timeutil import parse_strict

HOUR = timedelta(hours=1)
_NAME = re.compile(r"(\d{4})-(\d\d)-(\d\d)-(\d{1,2})")
_FILE = re.compile(r"(\d{4}-\d\d-\d\d-\d{1,2})\.json(\.gz)?")


def name(hour: datetime) -> str:
    """The hour's GH Archive name: 2015-01-01-15, 2015-01-01-0."""
    utc = hour.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}-{utc.hour}"


def file_name(hour: datetime) -> str:
    return f"{name(hour)}.json.gz"


def parse_name(text: str) -> datetime | None:
    """The hour named `YYYY-MM-DD-H` (H 0..23; a leading zero is tolerated), else None."""
    m = _NAME.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour = map(int, m.groups())
    try:
        return datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError:  # 2015-02-30-1, hour 24
        return None


def parse(text: str, option: str) -> datetime:
    """``--from``/``--to``: an hour name or an RFC 3339 time (the hour that holds it)."""
    hour = parse_name(text)
    if hour is None:
        when = parse_strict(text)
        if when is None:
            raise UsageError(f"{option}: not an hour (YYYY-MM-DD-H or RFC 3339): {text!r:.60}")
        hour = floor(when)
    return hour


def floor(when: datetime) -> datetime:
    """The start of the hour holding ``when`` (UTC)."""
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def of_file(path: str) -> datetime | None:
    """The hour a file is named after (`.../2015-01-01-15.json.gz`), else None."""
    m = _FILE.fullmatch(path.replace("\\", "/").rsplit("/", 1)[-1])
    return parse_name(m.group(1)) if m else None


def lag_s(hour: datetime, now: datetime) -> float:
    """How far behind ``now`` the end of ``hour`` is: the age of its newest events."""
    return max((now - (hour + HOUR)).total_seconds(), 0.0)
