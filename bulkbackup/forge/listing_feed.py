"""A `run` worker's claimed users on their way through the GraphQL lister (`github.api: graphql`).

The worker claims users until the lister has `github.graphql_batch` pages queued (big owners'
next pages count), so one query carries up to that many owners; the next pages of big owners
ride along with the first pages of users claimed later. Each query's finished owners become
`ready`: a user's listing is always complete before its sync starts. The worker syncs the
ready users, and only then claims and queries again, so a user is held past its claim for
the queries its listing needs (one per 100 repositories) and the syncs of the users they
finished; never more users than one query carries.
"""

from __future__ import annotations

import math
from collections import deque

from bulkbackup.forge.github_graphql import GraphQLLister, OwnerResult
from bulkbackup.queue import keys


class ListingFeed:
    def __init__(self, lister: GraphQLLister, batch: int) -> None:
        self.lister = lister
        self.batch = batch
        self.ready: deque[tuple[str, OwnerResult]] = deque()  # (member, its listing)
        self._members: dict[str, str] = {}  # login -> member, for users in the lister

    @property
    def listing(self) -> int:
        """Claimed users whose listing is not finished."""
        return len(self._members)

    @property
    def queued(self) -> int:
        """Pages waiting for the next query."""
        return self.lister.queued

    def room(self) -> int:
        """How many users a claim may add before the next query."""
        return max(0, self.batch - self.lister.queued)

    def wanted(self, remaining: int | None, first: int, procs: int, claim_max: int) -> int:
        """Users the next claim should ask for: up to a full query (github.graphql_batch
        pages), at most `claim_max` (run.claim_batch_max) a claim, holding no more than the
        batch size rule's share of the `remaining` users still due (1/(2 x procs)); before
        any claim, `first` (the rule's first size)."""
        if remaining is None:
            share = first
        else:
            share = max(1, math.ceil(remaining / (2 * procs))) - self.listing
        return min(self.room(), claim_max, share)

    def add(self, members: list[str]) -> None:
        """Claimed users, to be listed in the next query."""
        logins = []
        for member in members:
            login = keys.login_of(member)
            self._members[login] = member
            logins.append(login)
        self._finished(self.lister.submit(logins))  # invalid logins: failed at once

    def step(self, deadline: float | None) -> int:
        """One query (see GraphQLLister.step); how many users it made ready."""
        before = len(self.ready)
        self._finished(self.lister.step(deadline))
        return len(self.ready) - before

    def _finished(self, results: list[OwnerResult]) -> None:
        for result in results:
            member = self._members.pop(result.login, None)
            if member is not None:
                self.ready.append((member, result))

    def take_back(self) -> list[str]:
        """Every user not started (listed or not): to be given back."""
        members = [m for m, _ in self.ready]
        self.ready.clear()
        for login in self.lister.abandon():
            member = self._members.pop(login, None)
            if member is not None:
                members.append(member)
        members += self._members.values()
        self._members.clear()
        return members
