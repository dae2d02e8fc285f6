"""An owner's repositories while their GraphQL pages come in, read from both ends when big.

A page is 100 repositories and the next one needs the cursor of the last, so an owner of
1 500 repositories takes 15 queries one after the other, whatever else they carry: at the
end of a run those queries carry little else and cost a point each (issue 22). So once an
owner's first page says (`totalCount`) that more than one page is left, its repositories are
also read from the other end of the same order (CREATED_AT DESC), a second chain of cursors
beside the first: about half the queries one after the other, and about the same pages.

The chains are done when one reached its end, or when they passed each other: the front
chain holds every repository created before its last one, the back chain every one created
after its last one, so once the front's last is later than the back's last, every repository
is in one of them. Both chains are asked until then, even when one page would cover what is
left, so that they overlap. The count (`totalCount`) is not the proof: a repository deleted
during the listing would make it hide one not read. Only when the two last times are equal
(repositories created in the same second: the order says nothing about the tie) does the
count decide. An answer is evidence, not truth: when a chain's times are not in the order
asked (or not GitHub's `YYYY-MM-DDTHH:MM:SSZ`), or a back page brings no repository not read
already, the back chain stops and the front chain is read to its end, as without one. Duplicates (a
repository on both chains) are dropped by id. A chain of one end is never longer than it
would be alone: at worst (a server that lies about all of this) both chains are read to their
ends, within github.max_pages.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from bulkbackup.config import GitHubSettings
from bulkbackup.forge.github_graphql_query import PAGE, Ask, End
from bulkbackup.forge.listing import ListingOutcome, OwnerListing

MAX_REPOS_PER_OWNER = 200_000
MAX_CURSOR_CHARS = 1000
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass
class Chain:
    """One end's pages: repositories in the order read, the cursor of the next page."""

    end: End
    repos: list[dict[str, Any]] = field(default_factory=list)
    cursors: set[str] = field(default_factory=set)  # given so far: none twice (a loop)
    next_cursor: str | None = None
    ended: bool = False  # the last page said there is no next one
    last_time: str | None = None  # created_at of the last repository read
    ordered: bool = True  # every created_at so far in the order asked
    stalled: bool = False  # a page brought nothing not read already

    def _follows(self, created: str) -> bool:
        last = self.last_time
        return last is None or (created >= last if self.end is End.FRONT else created <= last)

    def add(self, repos: list[dict[str, Any]]) -> None:
        for repo in repos:
            created = repo.get("created_at")
            if isinstance(created, str) and _TIME.fullmatch(created) and self._follows(created):
                self.last_time = created
            else:
                self.ordered = False
        self.repos.extend(repos)


@dataclass
class OwnerPages:
    """An owner's listing so far, with REST's bounds (github.max_pages over both chains, no
    cursor twice in a chain, github.user_deadline_s from its first query)."""

    login: str
    outcome: ListingOutcome = ListingOutcome.LISTED
    error: str = ""
    gists: list[dict[str, Any]] | None = None  # asked with its first page (run.gists)
    front: Chain = field(default_factory=lambda: Chain(End.FRONT))
    back: Chain | None = None
    total: int | None = None  # totalCount, as the latest page said
    pages: int = 0
    deadline: float | None = None  # time.monotonic()
    ids: set[int] = field(default_factory=set)
    waiting: int = 1  # its pages asked and not answered yet (a query may carry one chain's)

    @property
    def failed(self) -> bool:
        return self.outcome is not ListingOutcome.LISTED

    def fail(self, outcome: ListingOutcome, error: str) -> None:
        self.outcome, self.error, self.gists = outcome, error, None
        self.front, self.back = Chain(End.FRONT), None

    def started(self, user_deadline_s: float) -> None:
        """Its deadline starts with its first query."""
        if self.deadline is None:
            self.deadline = time.monotonic() + user_deadline_s

    def add_page(self, end: End, repos: list[dict[str, Any]], has_next: bool,
                 cursor: Any, total: Any) -> None:
        """One page of one chain (the fields as GitHub sent them: checked here)."""
        if self.failed:
            return
        chain = self.front if end is End.FRONT else self.back
        if chain is None:
            return
        self.pages += 1
        chain.add(repos)
        known = len(self.ids)
        self.ids.update(r["id"] for r in repos if isinstance(r.get("id"), int))
        if end is End.BACK and len(self.ids) == known:
            chain.stalled = True  # nothing new from the back: no help, read the front alone
        if isinstance(total, int) and 0 <= total <= MAX_REPOS_PER_OWNER:
            self.total = total
        if len(self.front.repos) + len(self.back.repos if self.back else ()) > MAX_REPOS_PER_OWNER:
            self.fail(ListingOutcome.FAILED, f"more than {MAX_REPOS_PER_OWNER} repositories")
        elif not has_next:
            chain.ended = True
        elif not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR_CHARS:
            self.fail(ListingOutcome.FAILED, "GraphQL: invalid pagination cursor")
        else:
            chain.next_cursor = cursor

    def complete(self) -> bool:
        if self.failed or self.front.ended:
            return True
        back = self.back
        if back is None:
            return False
        if back.ended:  # it read them all, from the other end
            return True
        front_last, back_last = self.front.last_time, back.last_time
        if not (self.front.ordered and back.ordered and front_last and back_last):
            return False
        if front_last == back_last:  # a tie proves nothing: the count may
            return self.total is not None and len(self.ids) >= self.total
        return front_last > back_last

    def next_asks(self, s: GitHubSettings) -> list[Ask]:
        """The next pages to ask (none: complete or failed, see `done`). Fails the owner
        when a bound is passed."""
        if self.complete():
            return []
        back = self.back
        ordered = self.front.ordered and (back is None or back.ordered)
        if back is None:
            left = None if self.total is None else self.total - len(self.ids)
            if ordered and left is not None and left > PAGE:
                self.back = Chain(End.BACK)
                return self._bounded(s, [Ask(self.login, self.front.next_cursor),
                                         Ask(self.login, None, End.BACK)])
        elif ordered and not back.stalled:
            # Both, even when one page would do: the chains must pass each other to prove
            # that nothing is left between them (see the module's docstring).
            return self._bounded(s, [Ask(self.login, self.front.next_cursor),
                                     Ask(self.login, back.next_cursor, End.BACK)])
        return self._bounded(s, [Ask(self.login, self.front.next_cursor)])

    def _bounded(self, s: GitHubSettings, asks: list[Ask]) -> list[Ask]:
        error = ""
        if any(a.cursor is not None and a.cursor in self._chain(a.end).cursors for a in asks):
            error = (f"GraphQL: pagination loops (a cursor after page {self.pages} was "
                     "already given)")
        elif self.pages + len(asks) > s.max_pages:
            error = f"GraphQL: more than {s.max_pages} pages (github.max_pages)"
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            error = f"listing took longer than github.user_deadline_s ({s.user_deadline_s:g}s)"
        if error:
            self.fail(ListingOutcome.FAILED, error)
            return []
        self.waiting = len(asks)
        for ask in asks:
            if ask.cursor is not None:
                self._chain(ask.end).cursors.add(ask.cursor)
        return asks

    def _chain(self, end: End) -> Chain:
        chain = self.front if end is End.FRONT else self.back
        assert chain is not None, "a back page is asked only once its chain exists"
        return chain

    def repos(self) -> list[dict[str, Any]]:
        """Front then back reversed (oldest first), each repository once."""
        if self.back is None:
            return self.front.repos
        seen: set[int] = set()
        out = []
        for repo in [*self.front.repos, *reversed(self.back.repos)]:
            rid = repo.get("id")
            if isinstance(rid, int):
                if rid in seen:
                    continue
                seen.add(rid)
            out.append(repo)
        return out

    def done(self, clone_host: str) -> OwnerListing:
        if self.outcome is ListingOutcome.LISTED:
            return OwnerListing.listed(self.login, self.repos(), clone_host, gists=self.gists)
        return OwnerListing.failed(self.login, self.outcome, self.error)
