"""`bulkbackup events` on the command line: check the options, read, print a line per hour
(stderr, as it ends) and a summary; the exit code (1 when an hour failed)."""

from __future__ import annotations

import sys
from collections import Counter

from bulkbackup.config import Settings
from bulkbackup.errors import UsageError, printable
from bulkbackup.events import hours
from bulkbackup.events.reader import EventsReader, HourResult, HourState
from bulkbackup.interrupts import signals_interrupt


def events_command(settings: Settings, sources: list[str], first: str | None,
                   last: str | None, follow: bool, track_new: bool) -> int:
    if sources and (first or last or follow):
        raise UsageError("SOURCE files are read as they are: --from, --to and --follow "
                         "are for the hours of events.url")
    if follow and last:
        raise UsageError("--follow never ends: it takes no --to")
    first_hour = hours.parse(first, "--from") if first else None
    last_hour = hours.parse(last, "--to") if last else None
    seen: Counter[HourState] = Counter()

    def on_hour(result: HourResult) -> None:
        seen[result.state] += 1
        print(f"events: {render_hour(result, settings.events.gap_hours)}", file=sys.stderr,
              flush=True)

    reader = EventsReader(settings, track_new, on_hour)
    with signals_interrupt():
        if sources:
            reader.read_paths(sources)
        else:
            reader.read_hours(reader.first_hour(first_hour), last_hour, follow)
    print(f"events: {render_summary(seen)}", file=sys.stderr)
    return 1 if reader.failed else 0


def render_summary(seen: Counter[HourState]) -> str:
    read = seen[HourState.READ] + seen[HourState.UNNAMED]
    return (f"{read} hours read, {seen[HourState.ALREADY_READ]} already read, "
            f"{seen[HourState.GAP]} skipped, {seen[HourState.FAILED]} failed")


def duration(seconds: float) -> str:
    """40s, 12m, 3h05m, 12d04h."""
    s = int(seconds)
    if s >= 48 * 3600:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def render_hour(result: HourResult, gap_hours: float) -> str:
    label = printable(result.label)
    state = result.state
    reason = result.reason.removeprefix(f"{result.label}: ")
    if state is HourState.GAP:
        return (f"{label}: skipped: {printable(reason)} for more than "
                f"events.gap_hours ({gap_hours:g}h)")
    if state is HourState.FAILED:
        return f"{label}: failed: {printable(reason)}"
    if state is HourState.WAITING:
        lag = f" (lag {duration(result.lag_s)})" if result.lag_s is not None else ""
        return f"{label}: not published yet{lag}, waiting"
    if result.counts is None or result.figures is None:
        return f"{label}: {state.value}"
    c, f = result.counts, result.figures
    text = (f"{label}: {state.value}: {c.lines} lines, {c.marks} changes, {f.marked} owners "
            f"marked ({f.newly_due} newly due, {f.untracked} not tracked")
    text += f", {f.tracked_new} newly tracked)" if f.tracked_new else ")"
    if c.bad_lines:
        kinds = ", ".join(f"{why.value} {n}" for why, n in c.bad.most_common())
        first = ", ".join(str(n) for n, _ in c.first_bad)
        text += f", {c.bad_lines} bad lines ({kinds}; lines {first}"
        text += ", ...)" if c.bad_lines > len(c.first_bad) else ")"
    if result.lag_s is not None:
        text += f", lag {duration(result.lag_s)}"
    return text
