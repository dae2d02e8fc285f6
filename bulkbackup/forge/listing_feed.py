"""A `run` worker's claimed users on their way through its lister (forge/listing.py).

The feed maps claimed members to the logins the lister lists, keeps the users whose listing is
finished (`ready`), and says how many users the next claim should ask for (`wanted`):

- GitHub REST (`Batching.ONE`, a batch of one): the batch sizer's batch, claimed when the
  worker holds no user; the users are then listed and synced one after the other.
- GitHub GraphQL (`Batching.FILL`): the worker claims users until the lister has
  `github.graphql_batch` pages queued (big owners' next pages count), so one query carries up
  to that many owners; the next pages of big owners ride along with the first pages of users
  claimed later. When listings are handed over (`shares`: run/listing_share.py) it claims a
  full query whatever its share of the users left, and of the users a query finished keeps
  its share (`share`) and hands the others (`surplus`) to the other workers with their
  listing; otherwise it holds no more than its share.

Either way a user's listing is complete before its sync starts. The worker syncs the ready
users, and only then claims and lists again, so a user is held past its claim for the requests
its listing needs and the syncs of the users they finished; never more users than one query
carries (GraphQL) or one claim brought (REST).
"""

from __future__ import annotations

import math
from collections import deque

from bulkbackup.forge.listing import Batching, Lister, ListingOutcome, OwnerListing, TakenBack
from bulkbackup.queue import keys

# What a finished listing may be handed over as: a FAILED one is kept (its sync only records
# the failure), a CHANGED one never comes from the lister.
SHAREABLE = frozenset({ListingOutcome.LISTED, ListingOutcome.NOT_MODIFIED, ListingOutcome.GONE})


def share(remaining: int, procs: int) -> int:
    """The batch size rule's share of one process: about 1/(2 x procs) of the users left."""
    return max(1, math.ceil(remaining / (2 * procs)))


class ListingFeed:
    def __init__(self, lister: Lister, batch: int, shares: bool = False) -> None:
        self.lister = lister
        self.batch = batch  # GraphQL: owners a query carries (github.graphql_batch)
        # Listings can be handed over (WorkQueue.shares_listings): GraphQL claims full queries.
        self.shares = shares and lister.batching is Batching.FILL
        self.ready: deque[tuple[str, OwnerListing]] = deque()  # (member, its listing)
        self._members: dict[str, str] = {}  # login -> member, for users in the lister

    @property
    def listing(self) -> int:
        """Claimed users whose listing is not finished."""
        return len(self._members)

    @property
    def held(self) -> int:
        """Claimed users not started: being listed, or listed."""
        return len(self._members) + len(self.ready)

    @property
    def queued(self) -> int:
        """What waits for the lister's next step (GraphQL: pages)."""
        return self.lister.queued

    def room(self) -> int:
        """How many users a claim may add before the next query."""
        return max(0, self.batch - self.lister.queued)

    def wanted(self, remaining: int | None, sized: int, procs: int, claim_max: int) -> int:
        """Users the next claim should ask for. `sized`: the batch size rule's batch
        (run/batching.py, for the `remaining` users still due).

        REST: `sized`, when no user is held. GraphQL: up to a full query
        (github.graphql_batch pages), at most `claim_max` (run.claim_batch_max) a claim;
        unless listings are handed over (`shares`), holding no more than the batch size
        rule's share of the `remaining` users (`share`); before any claim, `sized` (the
        rule's first size)."""
        if self.lister.batching is Batching.ONE:
            return 0 if self.held else sized
        if self.shares:
            return min(self.room(), claim_max)
        most = sized if remaining is None else share(remaining, procs) - self.listing
        return min(self.room(), claim_max, most)

    def add(self, members: list[str]) -> None:
        """Claimed users, to be listed in the lister's next steps."""
        logins = []
        for member in members:
            login = keys.login_of(member)
            self._members[login] = member
            logins.append(login)
        self._finished(self.lister.submit(logins))  # invalid logins: failed at once

    def step(self, deadline: float | None) -> int:
        """One step of the lister (see Lister.step); how many users it made ready."""
        before = len(self.ready)
        self._finished(self.lister.step(deadline))
        return len(self.ready) - before

    def surplus(self, keep: int) -> list[tuple[str, OwnerListing]]:
        """The ready users beyond the first ``keep`` that may be handed over (SHAREABLE),
        taken out of `ready`: the others stay, in order."""
        kept: deque[tuple[str, OwnerListing]] = deque()
        out = []
        for item in self.ready:
            if len(kept) >= keep and item[1].outcome in SHAREABLE:
                out.append(item)
            else:
                kept.append(item)
        self.ready = kept
        return out

    def _finished(self, results: list[OwnerListing]) -> None:
        for result in results:
            member = self._members.pop(result.login, None)
            if member is not None:
                self.ready.append((member, result))

    def take_back(self) -> TakenBack:
        """Every user not started (listed or not), as members: to be given back. `stopped`:
        those whose listing a rate limit stopped (see TakenBack)."""
        waiting = [m for m, _ in self.ready]
        self.ready.clear()
        back = self.lister.take_back()
        stopped = [m for login in back.stopped if (m := self._members.pop(login, None))]
        waiting += [m for login in back.waiting if (m := self._members.pop(login, None))]
        waiting += self._members.values()
        self._members.clear()
        return TakenBack(tuple(stopped), tuple(waiting))
