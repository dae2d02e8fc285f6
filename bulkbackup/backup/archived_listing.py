"""The listing of a user whose events only moved refs, read from the archive instead of the
forge (issue 22; DESIGN.md "Events"): no API request.

A user claimed as EVENTS_REFS (queue/claims.py) names the repositories whose refs moved. When
the user's stored object lists every one of them and each has an archive (a bundle with
data), their stored entries are its listing (`ListingOutcome.CHANGED`): the worker fetches
their increments from the archived tips. Anything else (no object, a damaged or oversized
one, a repository it does not list or has no archive of, an entry that would not be cloned)
answers None: the user is listed by the forge as usual. Costs one bounded read of the user's
object and one HEAD per moved repository (at most keys.EVENTS_REFS_MAX).

`stored_wikis` reads the same object for the other sync without a fresh listing: REST's 304.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from bulkbackup.archive import layout
from bulkbackup.archive.stored import MAX_USER_OBJECT_BYTES
from bulkbackup.errors import BulkbackupError, ConfigError, Interrupted, NotFound
from bulkbackup.forge.listing import OwnerListing, RepoInfo
from bulkbackup.store import Store

log = logging.getLogger(__name__)


def archived_listing(store: Store, login: str, repos: Sequence[str], clone_host: str
                     ) -> OwnerListing | None:
    """``login``'s listing of just ``repos`` from its stored object, or None when the forge
    must list it (see the module's docstring). A store error answers None too: the listing
    then costs quota, and the sync meets the store's trouble as any sync does."""
    if not repos:
        return None
    try:
        entries = _stored_entries(store, login)
        if entries is None:
            return None
        wanted = [entries.get(name) for name in repos]
        if any(entry is None for entry in wanted):
            return None  # a repository the archive does not know: new, renamed, a fork...
        listing = OwnerListing.changed(login, [e for e in wanted if e is not None], clone_host)
        if not all(isinstance(r, RepoInfo) and not r.clone_refusal for r in listing.repos):
            return None  # e.g. the forge's host changed since: its listing says where now
        for name in repos:
            head = store.head(layout.bundle_key(login, name))
            if head is None or head.size == 0:
                return None  # no archive to fetch an increment on
    except (ConfigError, Interrupted):
        raise  # not this user's: the run stops (a refused token) or is stopping
    except (BulkbackupError, OSError) as exc:  # the store (or serve, for a remote worker)
        log.warning("%s: listed by the forge: its archive could not be read: %s", login, exc)
        return None
    return listing


def stored_wikis(store: Store, login: str, clone_host: str) -> list[RepoInfo] | None:
    """The repositories of ``login``'s stored listing that say they have a wiki, for a sync
    whose listing answered 304 (nothing moved, but a wiki's edits move no repository); None
    when the object is missing or not a listing. A store error raises, as the sync's own
    reads do."""
    entries = _stored_entries(store, login)
    if entries is None:
        return None
    repos = (RepoInfo.from_rest(entry, clone_host) for entry in entries.values())
    return [r for r in repos if isinstance(r, RepoInfo) and r.has_wiki]


def _stored_entries(store: Store, login: str) -> dict[str, dict[str, Any]] | None:
    """The stored object's entries by name; None when it is missing, larger than
    MAX_USER_OBJECT_BYTES or not a listing (read at most that many bytes and one more)."""
    try:
        with store.open(layout.user_key(login), 0, MAX_USER_OBJECT_BYTES + 1) as f:
            data = f.read(MAX_USER_OBJECT_BYTES + 1)
    except NotFound:
        return None
    if len(data) > MAX_USER_OBJECT_BYTES:
        return None
    try:
        listing = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(listing, list):
        return None
    found: dict[str, dict[str, Any]] = {}
    for entry in listing:
        if isinstance(entry, dict) and isinstance(name := entry.get("name"), str):
            found.setdefault(name, entry)
    return found
