"""One hour's lines read as marks, in bounded memory whatever the hour holds.

A line is read at most MAX_LINE_BYTES at a time: a longer one is skipped in pieces, never held
whole (counted as bad when its type would have changed something). A line whose type changes
nothing is skipped from its raw bytes (rules.interesting_type), without being parsed.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson

from bulkbackup.events.rules import Bad, Mark, change_of, interesting_type

# GH Archive's lines are a few KB (a PushEvent with 20 commits ~10 KB, the largest pull
# requests ~100s of KB): 1 MiB holds any real event.
MAX_LINE_BYTES = 1 << 20
BAD_SHOWN = 5  # bad lines remembered with their number, for the report


@dataclass
class HourCounts:
    """What one hour's lines held: bounded (counters, and the first BAD_SHOWN bad lines)."""

    lines: int = 0
    ignored: int = 0  # of a type that changes nothing
    marks: int = 0
    bad: Counter[Bad] = field(default_factory=Counter)
    first_bad: list[tuple[int, Bad]] = field(default_factory=list)

    @property
    def bad_lines(self) -> int:
        return sum(self.bad.values())

    def count_bad(self, why: Bad) -> None:
        self.bad[why] += 1
        if len(self.first_bad) < BAD_SHOWN:
            self.first_bad.append((self.lines, why))


def _skip_rest(readline: Callable[[int], bytes], max_bytes: int) -> None:
    """Read the rest of an over-long line in bounded pieces, keeping none of it."""
    while (rest := readline(max_bytes)) and not rest.endswith(b"\n"):
        pass


def marks_of(stream: BinaryIO, counts: HourCounts,
             max_bytes: int = MAX_LINE_BYTES) -> Iterator[Mark]:
    """The marks of ``stream``'s events, in order; every line counted in ``counts``.
    EOFError or OSError (a truncated or corrupt gzip) propagate: the hour fails."""
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    readline = stream.readline
    for raw in iter(functools.partial(readline, max_bytes + 1), b""):
        counts.lines += 1
        wanted = interesting_type(raw)
        if wanted is False:
            counts.ignored += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                _skip_rest(readline, max_bytes)
            continue
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            _skip_rest(readline, max_bytes)
            counts.count_bad(Bad.TOO_LONG)
            continue
        if not raw.strip():
            counts.ignored += 1  # a blank line (the end of a file written by hand)
            continue
        try:
            found = change_of(loads(raw))
        except decode_error:
            counts.count_bad(Bad.NOT_JSON)
            continue
        if found is None:
            counts.ignored += 1
        elif isinstance(found, Bad):
            counts.count_bad(found)
        else:
            counts.marks += 1
            yield found
