"""Which GH Archive event changes which repository and owner (DESIGN.md "Events"): pure rules.

An hour holds ~150 000 events, most of them of types that change nothing archived (watches,
issues, comments): `interesting_type` decides from the raw line, without parsing it, whether
the line is worth parsing at all; `change_of` reads a parsed event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bulkbackup.names import is_login, is_repo_name


class Change(enum.Enum):
    """What an event asks of the owner's next sync."""

    # Branches or tags of a repository moved (push, create/delete of a branch or tag): the
    # increments of just that repository, from the tips already archived; no listing.
    REFS_MOVED = "refs"
    # Something only a listing shows: a new repository (created, forked, made public), a
    # release, a wiki page.
    NEEDS_LISTING = "listing"


@dataclass(frozen=True)
class Mark:
    """One event's effect: ``owner``'s repository ``repo`` changed as ``change`` says."""

    owner: str
    repo: str
    change: Change


class Bad(enum.Enum):
    """Why a line of an interesting type marks nothing (counted, never fatal)."""

    NOT_JSON = "not JSON"
    NOT_AN_EVENT = "not an event object"
    NO_REPO = "repo.name missing or not owner/name"
    BAD_NAME = "invalid owner or repository name"
    NO_FORKEE = "payload.forkee.full_name missing or not owner/name"
    TOO_LONG = "line too long"


_REPO_TYPES = {
    "PushEvent": Change.REFS_MOVED,
    "CreateEvent": Change.REFS_MOVED,  # ref_type "repository": NEEDS_LISTING (see change_of)
    "DeleteEvent": Change.REFS_MOVED,
    "PublicEvent": Change.NEEDS_LISTING,
    "ReleaseEvent": Change.NEEDS_LISTING,
    "GollumEvent": Change.NEEDS_LISTING,
}
FORK = "ForkEvent"
INTERESTING = frozenset({*_REPO_TYPES, FORK})
_INTERESTING_RAW = frozenset(t.encode() for t in INTERESTING)
_TYPE_KEY = b'"type":"'


def interesting_type(line: bytes) -> bool | None:
    """From the raw line: False when its `type` is one that changes nothing (skip it without
    parsing), True when it may; None when the line shows no compact `"type":"..."` (parse it
    to know). GH Archive writes `type` second, after `id` and before any nested object, so
    the first `"type":"` of a line is the event's own: a nested one cannot be mistaken for
    it. A line shaped otherwise is only parsed, never skipped wrongly: `change_of` reads the
    parsed type again."""
    at = line.find(_TYPE_KEY)
    if at < 0:
        return None
    start = at + len(_TYPE_KEY)
    end = line.find(b'"', start, start + 40)
    if end < 0:
        return None
    return line[start:end] in _INTERESTING_RAW


def _full_name(value: object) -> tuple[str, str] | None:
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    owner, repo = value.split("/")
    return owner, repo


def change_of(event: object) -> Mark | Bad | None:
    """The event's mark; None for a type that changes nothing; Bad for a line of a type that
    would, whose fields are missing, of the wrong type, or invalid names."""
    if not isinstance(event, dict):
        return Bad.NOT_AN_EVENT
    kind = event.get("type")
    if kind not in INTERESTING:
        return None if isinstance(kind, str) else Bad.NOT_AN_EVENT
    payload = event.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    if kind == FORK:
        forkee = payload.get("forkee")
        names = _full_name(forkee.get("full_name") if isinstance(forkee, dict) else None)
        if names is None:
            return Bad.NO_FORKEE
        change = Change.NEEDS_LISTING
    else:
        repo = event.get("repo")
        names = _full_name(repo.get("name") if isinstance(repo, dict) else None)
        if names is None:
            return Bad.NO_REPO
        change = _REPO_TYPES[kind]
        if kind == "CreateEvent" and payload.get("ref_type") not in ("branch", "tag"):
            change = Change.NEEDS_LISTING  # a new repository (ref_type "repository")
    owner, name = names
    if not is_login(owner) or not is_repo_name(name):
        return Bad.BAD_NAME
    return Mark(owner, name, change)
