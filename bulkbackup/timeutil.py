"""RFC 3339 UTC times, the only time format in the store (`2026-11-28T17:00:00Z`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# RFC 3339 date-time as GitHub and the store write it (2026-01-01T00:00:00Z); nothing looser.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_rfc3339(when: datetime) -> str:
    # Not strftime: its %Y does not pad years before 1000 (`1-01-01T...`) on glibc.
    utc = when.astimezone(UTC)
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
            f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z")


def parse_rfc3339(text: str) -> datetime | None:
    """Parse a stored or API time; None for empty or malformed text."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        return None


# Times from the API must be real dates in this range: nothing on GitHub is older, and a
# time in the future (beyond clock skew) is not a time anything happened.
EARLIEST_API_TIME = datetime(2005, 1, 1, tzinfo=UTC)
API_CLOCK_SKEW = timedelta(days=1)


def parse_api_time(text: str) -> datetime | None:
    """An untrusted (API or stored) time as a datetime; None when it is malformed, not a
    real date (`9999-99-99`), before 2005 or more than a day in the future."""
    parsed = parse_strict(text)
    if parsed is None or not EARLIEST_API_TIME <= parsed <= now() + API_CLOCK_SKEW:
        return None
    return parsed


def parse_strict(text: str) -> datetime | None:
    """An RFC 3339 date-time (the whole text, nothing looser than GitHub writes); else None."""
    return parse_rfc3339(text.upper()) if _RFC3339.fullmatch(text) else None
