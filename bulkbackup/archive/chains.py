"""A repository's archive over time: a full base bundle and a chain of increments on it, and
the chains kept from before for `restore --at` (README "Incremental archives").

Everything here is decided from what the store says: the base's metadata (`Chain`,
`Increments`, `ChainBytes`, `KeptSince`), and a listing of the repository's parts when a
chain is replaced or may have expired; no worker needs state from an earlier run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import (
    CHAIN,
    CHAIN_BYTES,
    ERROR,
    INCREMENTS,
    KEPT_SINCE,
    LAST_SYNC,
    PUSHED_AT,
    UPDATED_AT,
)
from bulkbackup.config import RunSettings
from bulkbackup.store import Head
from bulkbackup.timeutil import parse_api_time, parse_rfc3339

# More than this many increments in metadata is damage, not a chain (the setting's bound).
MAX_COMMITTED = 10_000
# A stored count longer than this is damage (and int() raises past 4300 digits).
COUNT_DIGITS_MAX = 19


@dataclass
class StoredParts:
    """The parts of one repository found in a listing: chain id -> seq -> size."""

    chains: dict[str, dict[int, int]] = field(default_factory=dict)

    def add(self, chain: str, seq: int, size: int) -> None:
        self.chains.setdefault(chain, {})[seq] = size

    def kept(self) -> list[str]:
        """Ids of the chains kept as history (their base copied as part 0), oldest first."""
        return sorted(c for c, parts in self.chains.items() if 0 in parts)


def committed(head: Head) -> int:
    """How many increments the base's metadata says are committed (0 when none or damaged:
    `increments_damage` tells which)."""
    text = head.get(INCREMENTS)
    return int(text) if not increments_damage(head) and text else 0


def increments_damage(head: Head) -> str:
    """"" when the base's `Increments` is absent or a count in 0..MAX_COMMITTED; else what
    is wrong with it: a reader must not take the base alone for the latest state."""
    text = head.get(INCREMENTS)
    if not text or (text.isascii() and text.isdigit() and len(text) <= COUNT_DIGITS_MAX
                    and int(text) <= MAX_COMMITTED):
        return ""
    return f"damaged Increments metadata {text[:40]!r} (not a count up to {MAX_COMMITTED})"


def chain_of(head: Head) -> str:
    """The id of the chain ``head`` is the base of. A base written before increments existed
    has none: its id is then its archive time (`LastSync`), the same on every read."""
    stored = head.get(CHAIN)
    if layout.chain_time(stored) is not None:
        return stored
    when = parse_rfc3339(head.get(LAST_SYNC)) or head.last_modified
    return layout.chain_id(when)


def has_archive(head: Head | None) -> bool:
    """Is ``head`` a state worth keeping: a bundle with data, or an emptied repository."""
    return head is not None and (head.size > 0 or head.get(ERROR) == layout.EMPTY_REPOSITORY)


class Step(enum.Enum):
    INCREMENT = "increment"
    FULL = "full"


def chain_bytes(head: Head) -> int:
    """The committed increments' bytes, as the base's metadata says (`ChainBytes`)."""
    text = head.get(CHAIN_BYTES)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= COUNT_DIGITS_MAX else 0


def next_step(head: Head, run: RunSettings) -> Step:
    """Whether the next archive of a changed repository can be an increment on ``head``.

    A full bundle again after `run.max_increments` increments, or once they add up to more
    than half of the base (a restore would then download more than a fresh full bundle).
    Decided from the base's metadata alone: no listing of the parts (a missing one is found
    by `verify`, and a failed verify makes the next archive full).
    """
    n = committed(head)
    if (run.max_increments == 0 or head.size == 0 or n >= run.max_increments
            or increments_damage(head)):  # which increments are committed is unknown
        return Step.FULL
    if n and 2 * chain_bytes(head) > head.size:
        return Step.FULL
    return Step.INCREMENT


def may_expire(head: Head, now: datetime, keep_days: int) -> bool:
    """Can a kept chain of this repository have passed the retention? Its oldest kept
    chain (`KeptSince`) started before any other kept chain ended, so none can while that
    start is within `keep_days`: no listing is needed to know."""
    since = layout.chain_time(head.get(KEPT_SINCE))
    return since is not None and since <= now - timedelta(days=keep_days)


def expired(parts: StoredParts, current: str, now: datetime, keep_days: int) -> list[str]:
    """Keys to delete: chains no restore within the retention can need.

    A kept chain serves `restore --at` from its base's time until the next chain's base:
    it goes once that next base is older than `keep_days`. Increments of a chain that is
    neither current nor kept (its base was replaced without history) serve nothing.
    Returns chain ids; the caller deletes every part of them.
    """
    ids = sorted(set(parts.chains) | {current})
    limit = now - timedelta(days=keep_days)
    doomed: list[str] = []
    for i, chain in enumerate(ids):
        if chain == current:
            continue
        successor = layout.chain_time(ids[i + 1]) if i + 1 < len(ids) else None
        kept = 0 in parts.chains.get(chain, {})
        if not kept or keep_days == 0 or (successor is not None and successor <= limit):
            doomed.append(chain)
    return doomed


def new_chain(head: Head | None, now: datetime) -> str:
    """The id of a new base written ``now``: later than the chain it replaces, even when
    this host's clock is behind the one that wrote it (ids order `restore --at`)."""
    latest = layout.chain_time(chain_of(head)) if head is not None and has_archive(head) \
        else None
    when = now if latest is None or now > latest else latest + timedelta(microseconds=1)
    return layout.chain_id(when)


def newer_than(head: Head, pushed: str, updated: str) -> bool:
    """Is the stored archive newer than what the API just described?

    Times are compared as dates, never as text. Only a real stored time can be newer: a
    stored value that is malformed or in the future (written by an older version, or by
    hand) must not block a repository forever; nor can anything be newer than unknown
    times (then the fresh archive is stored, as on every pass for such a repository)."""
    stored = parse_api_time(head.get(PUSHED_AT)), parse_api_time(head.get(UPDATED_AT))
    listed = parse_api_time(pushed), parse_api_time(updated)
    if stored[0] is None or listed[0] is None:
        return False
    if stored[0] != listed[0]:
        return stored[0] > listed[0]
    return stored[1] is not None and listed[1] is not None and stored[1] > listed[1]
