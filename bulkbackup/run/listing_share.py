"""Listings handed over between a run's workers, so that every GraphQL query carries a full
batch of owners (docs/github-api.md "Listing"; issue 22).

A worker that lists claims a full query of users whatever its share of the users left
(forge/listing_feed.py). Of the users a query finished it keeps its share for syncing and
hands each other one over: its listing is cached in Redis (keys.listing, run.listing_cache_s)
and the user given back as it was (its lock released, its score and marks restored), so
another worker claims it at once and syncs it with no query. A claim takes the cached
listings of its users in one round trip (queue/listings.py), at most its share of them; the
other users with one cached go back at once for the next claimant, the rest are listed.

A cached listing is checked as a fresh one is (OwnerListing.from_json: the login, every
repository entry through RepoInfo.from_rest), must be its member's and made during this run
(listed at or after the run's start) and listed through the same API and git host as the
taker's (hosts of one fleet may reach the forge at different addresses, and clone URLs are
checked against the taker's git host): anything else is ignored and the user listed again. One
that is too large (MAX_BYTES) is not cached: the worker keeps its user. A worker that dies
after caching loses nothing: the user is given back, or its lock expires, and whoever claims
it next finds the listing (or lists it again once it expired).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from bulkbackup.backup.user_backup import UserBackup
from bulkbackup.forge.listing import OwnerListing
from bulkbackup.forge.listing_feed import ListingFeed, share
from bulkbackup.queue import keys
from bulkbackup.queue.claims import Claimed
from bulkbackup.queue.listings import Cached
from bulkbackup.run.work_queue import WorkQueue

log = logging.getLogger(__name__)

# A listing larger than this (encoded) is not handed over: its worker syncs the user itself.
# About 10 000 repositories as GitHub lists them; larger owners are rare and costly to move.
MAX_BYTES = 8 << 20


@dataclass(frozen=True)
class Admitted:
    """A claim's users that need a listing, sorted out (see `ListingShare.admit`)."""

    ready: list[tuple[str, OwnerListing]]  # their listing cached and valid: no query
    to_list: list[str]  # for the lister
    handed_on: list[str]  # cached beyond the claimer's share: given back at once


class ListingShare:
    """One worker's side of the hand-over (used only when its queue shares listings and its
    lister fills batches: `ListingFeed.shares`)."""

    def __init__(self, queue: WorkQueue, procs: int, forge: tuple[str, str], run_start: float,
                 clock_offset_s: float, give_back: Callable[[str], None]) -> None:
        self.queue = queue
        self.procs = procs
        self.api_url, self.clone_host = forge  # this worker's view of the forge
        self.run_start = run_start
        self.clock_offset_s = clock_offset_s
        self.give_back = give_back  # the worker's give back of a user handed over
        self.max_bytes = MAX_BYTES
        self.handed = 0  # users handed over with their listing (figures for tests, logs)
        self.received = 0  # users claimed with a cached listing used

    def place(self, job: UserBackup, feed: ListingFeed, claimed: list[Claimed],
              remaining: int) -> bool:
        """Claimed users into ``feed``: ready at once when their listing comes from the
        archive (EVENTS_REFS: job.archived_listing, no API request) or was handed over with
        them (`admit`, when the feed shares); the others to the lister. False when every one
        was handed on (claiming again now would only meet them again)."""
        to_list = []
        for c in claimed:
            archived = (None if c.needs_listing
                        else job.archived_listing(keys.login_of(c.member), c.repos))
            if archived is None:
                to_list.append(c.member)
            else:
                feed.ready.append((c.member, archived))
        placed = len(claimed) - len(to_list)
        if feed.shares and to_list:
            admitted = self.admit(to_list, remaining, len(feed.ready))
            feed.ready.extend(admitted.ready)
            to_list = admitted.to_list
            placed += len(admitted.ready)
        if to_list:
            feed.add(to_list)
        return placed + len(to_list) > 0

    def admit(self, members: list[str], remaining: int, held: int) -> Admitted:
        """Claimed ``members`` that need a listing: the cached listings of up to this
        process's share of them (``remaining`` users left after the claim, ``held`` users
        this process holds ready) are used; other cached ones are handed on (given back for
        another process); the rest are to be listed."""
        most = share(remaining + len(members), self.procs) - held
        try:
            cached = self.queue.take_listings(members, most)
        except self.queue.errors as exc:  # listed instead; the cached ones expire
            log.warning("cached listings not read (listing %d users): %s", len(members), exc)
            cached = Cached()
        ready, to_list, handed_on = [], [], []
        for member in members:
            data = cached.taken.get(member)
            listing = None if data is None else self.decode(member, data)
            if listing is not None:
                ready.append((member, listing))
            elif member in cached.left:
                handed_on.append(member)
            else:
                to_list.append(member)
        self.received += len(ready)
        for member in handed_on:
            self.give_back(member)
        return Admitted(ready, to_list, handed_on)

    def hand_over(self, feed: ListingFeed, remaining: int) -> int:
        """After a listing step: keep this process's share of the ready users, hand the
        others over (cached, then given back); how many were handed over."""
        keep = share(remaining + len(feed.ready), self.procs)
        found: dict[str, bytes] = {}
        surplus = feed.surplus(keep)
        for member, listing in surplus:
            data = self.encode(listing)
            if data is None:
                feed.ready.append((member, listing))
            else:
                found[member] = data
        if not found:
            return 0
        try:
            self.queue.store_listings(found)  # cached before the users are claimable again
        except self.queue.errors as exc:  # kept and synced here instead
            log.warning("listings not handed over (%d users kept): %s", len(found), exc)
            feed.ready.extend(item for item in surplus if item[0] in found)
            return 0
        for member in found:
            self.give_back(member)
        self.handed += len(found)
        return len(found)

    def encode(self, listing: OwnerListing) -> bytes | None:
        doc = listing.to_json()
        if doc is None:
            return None
        data = orjson.dumps({"at": time.time() + self.clock_offset_s, "api": self.api_url,
                             "git": self.clone_host, "listing": doc})
        return data if len(data) <= self.max_bytes else None

    def decode(self, member: str, data: str | bytes) -> OwnerListing | None:
        """A cached listing, if it is valid, ``member``'s and made during this run."""
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            at = doc.get("at")
            if not isinstance(at, int | float) or at < self.run_start:
                raise ValueError(f"listed before this run started ({at!r:.40})")
            if (doc.get("api"), doc.get("git")) != (self.api_url, self.clone_host):
                raise ValueError(f"listed through another API URL or git host "
                                 f"({str(doc.get('api'))[:100]!r})")
            listing = OwnerListing.from_json(doc.get("listing"), self.clone_host)
            if listing.login != keys.login_of(member):
                raise ValueError(f"the listing of {listing.login!r}")
        except ValueError as exc:  # orjson.JSONDecodeError is one
            log.warning("%s: cached listing ignored (listed again): %s", keys.login_of(member),
                        exc)
            return None
        return listing
