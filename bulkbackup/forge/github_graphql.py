"""GitHub GraphQL listing of a claimed batch: many owners' repositories in one query.

`GraphQLLister.list_owners(logins)` asks, in one query, `repositoryOwner(login:)` for up to
`github.graphql_batch` logins (aliases u0..uN-1), each with its first 100 owned repositories
(`ownerAffiliations: OWNER`, forks included, as REST `type=owner`); owners with more follow
by cursor, their later pages batched together too, a big owner's from both ends at once
(forge/graphql_paging.py). 100 owners cost 1 point (GitHub's rule:
connection requests / 100, rounded, at least 1), where REST needs 100+ requests.

Every repository is stored with the REST field names (`graphql_query.MAPPING`, one table
that also builds the query), so readers of the store see one shape whichever API listed it.

Failure handling: an alias answered null (`NOT_FOUND`) is a gone owner and fails no other;
502/504, a "resource limits" error, a read timeout or an oversized answer split the batch in
halves (the batch size adapts down, and back up after successes); RATE_LIMITED answers and
403/429 limits are waits through the quota broker (REST's rule: `QuotaBroker.limited`), never
failures; a 401 or another 403 is a refused token (TokenRefused: exit 2, no owner failed). An
owner's pages are bounded as REST's (github.max_pages, no cursor twice, github.user_deadline_s).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson
import urllib3

from bulkbackup import __version__
from bulkbackup.config import GitHubSettings
from bulkbackup.errors import Interrupted, RateLimited, TokenRefused
from bulkbackup.forge.github_graphql_query import (
    Ask,
    build_query,
    gist_owners,
    gist_to_rest,
    points_for,
    to_rest,
)
from bulkbackup.forge.graphql_paging import OwnerPages
from bulkbackup.forge.graphql_relay import RelayClient
from bulkbackup.forge.listing import Batching, ListingOutcome, OwnerListing, TakenBack, admit
from bulkbackup.forge.quota_broker import QuotaBroker, Reservation, Resource, Wait
from bulkbackup.http.bounded import BoundedPool, Overdue, SlowRead, TooLarge
from bulkbackup.http.tls import raise_if_untrusted
from bulkbackup.redact import add_secrets, redact

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 << 20  # larger answers split the batch
GROW_AFTER = 2  # full batches passing before a split batch size doubles again
# The proof of a token (`prove_tokens`): 1 point, the least a query costs.
PROOF_QUERY = "query { rateLimit { cost remaining resetAt } }"


@dataclass
class Stats:
    queries: int = 0  # HTTP requests sent
    points: int = 0  # as GitHub reported (rateLimit.cost)
    splits: int = 0
    waits: int = 0  # rate-limit answers (RATE_LIMITED, secondary limits)


class _Kind(Enum):
    OK = "ok"
    SPLIT = "split"
    FAILED = "failed"


@dataclass(frozen=True)
class _Reply:
    kind: _Kind
    payload: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class GraphQLLister:
    """Lists owners in batched queries; one per process, reused (the batch size it learned
    from splits carries over). A `Lister` (forge/listing.py) with batches of up to
    `github.graphql_batch` owners.

    Two ways to use it: `list_owners(logins)` lists a claimed batch and returns when every
    owner is done; or a stream, `submit(logins)` then `step()` (one query each) while
    `queued`, each step returning the owners it finished. In a stream the next pages of big
    owners ride along with the first pages of owners submitted later, so their cursor chains
    cost no extra queries.
    """

    batching = Batching.FILL

    def __init__(self, settings: GitHubSettings, broker: QuotaBroker,
                 stop: threading.Event | None = None, pool_size: int = 4,
                 gists: bool = False) -> None:
        """``gists``: owners' first pages also ask their public gists, as many as cost no
        point (run.gists; github_graphql_query.gist_owners)."""
        self.settings = settings
        self.gists = gists
        self.broker = broker
        self.stop = stop or threading.Event()
        self.url = settings.graphql_endpoint
        self.batch = self.max_batch = settings.graphql_batch
        self.stats = Stats()
        self.relay: RelayClient | None = None  # a run's worker: small queries merged
        self._good = 0
        self._queue: deque[Ask] = deque()  # next pages first, then owners' first pages
        self._open: dict[str, OwnerPages] = {}  # submitted, not finished
        self._ready: list[OwnerListing] = []  # finished, not yet returned by step()
        add_secrets(settings.tokens)
        self._http = BoundedPool(pool_size, {
            "Content-Type": "application/json", "Accept": "application/json",
            "User-Agent": f"bulkbackup/{__version__}"})

    def close(self) -> None:
        self._http.clear()

    @property
    def queued(self) -> int:
        """Pages waiting for a query (owners submitted and not finished have one each)."""
        return len(self._queue)

    def wait_ready(self) -> None:
        """Wait until a token could send a query (see QuotaBroker.wait_ready)."""
        self.broker.wait_ready(Resource.GRAPHQL, self.stop, self.settings.max_rate_wait_s)

    def list_owners(self, logins: Sequence[str], deadline: float | None = None
                    ) -> dict[str, OwnerListing]:
        """Every login's repositories (REST field names), or gone, or failed. Owners of an
        open stream finished meanwhile are kept for the next `step()`. RateLimited when a
        wait for quota would pass `deadline` (time.monotonic())."""
        wanted = set(logins)
        results: dict[str, OwnerListing] = {}
        for r in self.submit(logins):
            results[r.login] = r
        while wanted - results.keys() and self._queue:
            for r in self.step(deadline):
                if r.login in wanted:
                    results[r.login] = r
                else:
                    self._ready.append(r)
        return results

    def submit(self, logins: Sequence[str]) -> list[OwnerListing]:
        """Queue owners for listing; returns those finished at once (invalid logins)."""
        admitted, refused = admit(logins, self._open)
        for login in admitted:
            self._open[login] = OwnerPages(login)
            self._queue.append(Ask(login, None))
        return refused

    def take_back(self) -> TakenBack:
        """Forget every owner not returned yet: all of them `stopped`, as the owners of one
        stream wait on the same rate limit (each counts an attempt when it passes the
        deadline)."""
        logins = list(self._open) + [r.login for r in self._ready]
        self._queue.clear()
        self._open.clear()
        self._ready.clear()
        return TakenBack(stopped=tuple(logins))

    def step(self, deadline: float | None = None) -> list[OwnerListing]:
        """One query for the next queued pages (next pages of owners already started come
        first); the owners it finished (listed, gone or failed). RateLimited (nothing lost:
        the pages stay queued) when a wait for quota would pass `deadline`."""
        finished, self._ready = self._ready, []
        if not self._queue:
            return finished
        chunk = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
        for ask in chunk:
            self._open[ask.login].started(self.settings.user_deadline_s)
        asked = gist_owners(chunk, int(time.time() // 86400)) if self.gists else set()
        try:
            reply = self._relayed(chunk, asked, deadline) or self._send(chunk, asked, deadline)
        except (Interrupted, RateLimited, TokenRefused):
            self._queue.extendleft(reversed(chunk))
            self._ready = finished + self._ready
            raise
        if reply.kind is _Kind.SPLIT and len(chunk) > 1:
            self.batch, self._good = max(1, len(chunk) // 2), 0
            self.stats.splits += 1
            log.info("GraphQL: batch of %d too big; splitting to %d", len(chunk), self.batch)
            self._queue.extendleft(reversed(chunk))
            return finished
        if reply.kind is _Kind.OK:
            self._grow(len(chunk))
            for i, ask in enumerate(chunk):
                self._absorb(ask, reply.payload, f"u{i}", ask.first and ask.login in asked)
        more: list[Ask] = []
        for ask in chunk:
            self._open[ask.login].waiting -= 1
        for login in dict.fromkeys(ask.login for ask in chunk):  # an owner may be in twice
            owner = self._open[login]
            if reply.kind is not _Kind.OK:
                owner.fail(ListingOutcome.FAILED, reply.error or "GraphQL query failed")
            if owner.waiting:  # its other chain's page is still queued
                continue
            asks = owner.next_asks(self.settings)
            if asks:
                more.extend(asks)
            else:
                finished.append(self._open.pop(login).done(self.settings.clone_host))
        self._queue.extendleft(reversed(more))
        return finished

    def _relayed(self, chunk: list[Ask], asked: set[str], deadline: float | None
                 ) -> _Reply | None:
        """A small query through the run's relay (forge/graphql_relay.py), merged with the
        other workers' small queries; None: not relayed (send it here)."""
        if self.relay is None or len(chunk) >= self.max_batch:
            return None
        payload = self.relay.ask(chunk, asked, deadline)
        return None if payload is None else _Reply(_Kind.OK, payload)

    def send_query(self, asks: list[Ask], gists: set[str], deadline: float | None
                   ) -> dict[str, Any] | None:
        """One query for ``asks`` (the relay's, for several workers): its answer when GitHub
        answered it whole; None for a split, a failure or a limit (each worker meets those
        itself). Waits for quota as `step` does (RateLimited past ``deadline``)."""
        reply = self._send(asks, gists, deadline)
        return reply.payload if reply.kind is _Kind.OK else None

    def _grow(self, size: int) -> None:
        """Only full batches passing show that the size may grow again."""
        if size == self.batch < self.max_batch:
            self._good += 1
            if self._good >= GROW_AFTER:
                self.batch, self._good = min(self.max_batch, self.batch * 2), 0

    def _absorb(self, ask: Ask, payload: dict[str, Any], alias: str, gists: bool) -> None:
        """Add one alias's answer to its owner (with ``gists``, its gists: an organization
        has none)."""
        owner = self._open[ask.login]
        if owner.failed:  # by its other chain's page in this query: that reason stands
            return
        data = payload.get("data")
        node = data.get(alias) if isinstance(data, dict) else None
        errors = [e for e in payload.get("errors") or [] if isinstance(e, dict)
                  and isinstance(e.get("path"), list) and e["path"][:1] == [alias]]
        if node is None:
            if errors and not any(e.get("type") == "NOT_FOUND" for e in errors):
                owner.fail(ListingOutcome.FAILED, "GraphQL: " + _message(errors[0]))
            else:
                owner.fail(ListingOutcome.GONE, f"user {ask.login} not found on GitHub (NOT_FOUND)")
            return
        conn = node.get("repositories") if isinstance(node, dict) else None
        nodes = conn.get("nodes") if isinstance(conn, dict) else None
        page = conn.get("pageInfo") if isinstance(conn, dict) else None
        if errors or not isinstance(nodes, list) or not isinstance(page, dict):
            reason = _message(errors[0]) if errors else "malformed repositories connection"
            owner.fail(ListingOutcome.FAILED, "GraphQL: " + reason)
            return
        if gists:
            got = node.get("gists")
            found = got.get("nodes") if isinstance(got, dict) else None
            owner.gists = [gist_to_rest(n) for n in found or () if isinstance(n, dict)]
        assert isinstance(conn, dict)
        owner.add_page(ask.end, [to_rest(n) for n in nodes if isinstance(n, dict)],
                       page.get("hasNextPage") is True, page.get("endCursor"),
                       conn.get("totalCount"))

    def prove_tokens(self) -> None:
        """One `rateLimit` query (1 point, through the broker) with each token, or without
        one when none is set: TokenRefused when GitHub refuses it. A token known spent or
        paused, or an answer that proves nothing (unreachable, 5xx), is let through."""
        body = orjson.dumps({"query": PROOF_QUERY})
        for tid in self.broker.token_ids:
            res = self.broker.reserve(Resource.GRAPHQL, 1, only=tid)
            if isinstance(res, Wait):
                continue
            reply = self._post(body, res, 1)
            if reply is not None and reply.kind is _Kind.FAILED:
                log.warning("could not prove a token (%s): %s", self.url, reply.error)

    def _send(self, chunk: list[Ask], gists: set[str],
              deadline: float | None) -> _Reply:
        """One query for `chunk` (with the gists of the owners in ``gists``), with quota
        reservations, waits and bounded retries."""
        query, variables = build_query(chunk, gists)
        body = orjson.dumps({"query": query, "variables": variables})
        points = points_for(len(chunk))  # gist_owners: the gists cost none
        failures = 0
        while True:
            if self.stop.is_set():
                raise Interrupted("stopping")
            res = self.broker.acquire(Resource.GRAPHQL, points, self.stop,
                                      self.settings.max_rate_wait_s, deadline)
            reply = self._post(body, res, len(chunk))
            if reply is None:  # a rate limit: the broker now knows; reserve again
                self.stats.waits += 1
                continue
            if reply.kind is _Kind.FAILED and reply.payload.get("retry"):
                failures += 1
                if failures > self.settings.max_retries:
                    return _Reply(_Kind.FAILED, error=reply.error)
                delay = self.settings.backoff_s * 2 ** (failures - 1) * random.uniform(0.5, 1.5)
                log.info("%s; retry %d in %.1fs", reply.error, failures, delay)
                if self.stop.wait(delay):
                    raise Interrupted("stopping")
                continue
            return reply

    def _post(self, body: bytes, res: Reservation, size: int) -> _Reply | None:
        """One POST; None when the answer was a rate limit (recorded with the broker)."""
        headers = {"Authorization": f"bearer {res.token}"} if res.token else {}
        self.stats.queries += 1
        # The timeout is read from `settings` on each request (not fixed in the pool), so a
        # lister whose settings are replaced uses the new one. Each read waits at most
        # timeout_s, the whole answer at most 4 x timeout_s: a server trickling bytes (headers
        # included) cannot hold a worker.
        timeout_s = self.settings.timeout_s
        try:
            status, got, data = self._http.request(
                "POST", self.url, headers, body=body, ends=time.monotonic() + 4 * timeout_s,
                max_bytes=MAX_BODY_BYTES, read_s=timeout_s, connect_s=min(timeout_s, 10.0))
        except TooLarge:
            return _Reply(_Kind.SPLIT if size > 1 else _Kind.FAILED,
                          error=f"GraphQL answer above {MAX_BODY_BYTES} bytes")
        except (urllib3.exceptions.HTTPError, Overdue, SlowRead) as exc:
            raise_if_untrusted("GitHub's GraphQL API", exc)
            timed_out = isinstance(exc, Overdue | SlowRead)
            if timed_out and size > 1:  # GitHub gives up on a query after 10 s
                return _Reply(_Kind.SPLIT)
            reason = redact(f"{type(exc).__name__}: {exc}")[:300]
            return _Reply(_Kind.FAILED, {"retry": True}, f"GitHub GraphQL unreachable: {reason}")
        self.broker.record(res, got)
        return self._judge(status, got, data, res, size)

    def _judge(self, status: int, headers: Any, data: bytes, res: Reservation,
               size: int) -> _Reply | None:
        if self.broker.limited(res, status, headers, data, self.settings.max_rate_wait_s):
            return None  # every process now waits (github.py's rule, in the broker)
        if status in (401, 403):  # the token, not the owners: no owner's failure
            raise self.broker.refused(res, status, data, "GraphQL API")
        if status in (502, 504) and size > 1:
            return _Reply(_Kind.SPLIT)
        if status >= 500:
            return _Reply(_Kind.FAILED, {"retry": True}, f"GitHub GraphQL answered HTTP {status}")
        if status != 200:
            return _Reply(_Kind.FAILED, error=f"GitHub GraphQL answered HTTP {status}")
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _Reply(_Kind.FAILED, {"retry": True}, "GitHub GraphQL: invalid JSON")
        if not isinstance(payload, dict):
            return _Reply(_Kind.FAILED, error="GitHub GraphQL: expected a JSON object")
        return self._errors(payload, headers, res, size)

    def _errors(self, payload: dict[str, Any], headers: Any, res: Reservation,
                size: int) -> _Reply | None:
        errors = [e for e in payload.get("errors") or [] if isinstance(e, dict)]
        if any(e.get("type") == "RATE_LIMITED" for e in errors):
            # Unless the headers said the token is spent until a reset still ahead, it is
            # paused (no headers, points still shown, a reset already past): never a loop.
            self.broker.hold(res, self.settings.max_rate_wait_s)
            return None
        if any(e.get("type") == "RESOURCE_LIMITS_EXCEEDED"
               or "resource limits" in _message(e).lower() for e in errors):
            if size > 1:
                return _Reply(_Kind.SPLIT)
            return _Reply(_Kind.FAILED, error="GraphQL: resource limits exceeded for one owner")
        data = payload.get("data")
        if not isinstance(data, dict):
            first = _message(errors[0]) if errors else "no data"
            return _Reply(_Kind.FAILED, error=f"GitHub GraphQL: {first}")
        rate = data.get("rateLimit")
        if isinstance(rate, dict) and isinstance(rate.get("cost"), int):
            self.stats.points += max(0, min(rate["cost"], 10**6))
        return _Reply(_Kind.OK, payload)


def _message(error: dict[str, Any]) -> str:
    message = error.get("message")
    return redact(message)[:300] if isinstance(message, str) else "error"
