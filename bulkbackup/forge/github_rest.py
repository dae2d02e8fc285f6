"""GitHub REST client: list a user's repositories, with the shared quota broker's tokens.

One urllib3 pool per process. Every request is reserved with the quota broker first
(quota.py: shared by every process on every host, or this process's own without Redis), and
its answer's x-ratelimit-* headers are recorded there; when every token is known spent or
paused nothing is sent until the earliest reset. A rate limit never fails a user, nor does a
refused token (401, a 403 that is not a rate limit: TokenRefused, exit 2). 5xx
answers and connection errors get bounded retries with backoff and jitter.
Everything the API says is bounded: each answer in time (github.timeout_s) and size
(github.max_response_mb), a listing in pages (github.max_pages, no page twice) and in time
(github.user_deadline_s, rate-limit waits included: past it a rate limit raises RateLimited).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import urllib3

from bulkbackup import __version__
from bulkbackup.config import GitHubSettings
from bulkbackup.errors import GitHubError, Interrupted, UserGone
from bulkbackup.forge.listing import (
    Batching,
    Conditions,
    ListingOutcome,
    OwnerListing,
    TakenBack,
    admit,
    no_conditions,
)
from bulkbackup.forge.quota_broker import QuotaBroker, Resource, Wait
from bulkbackup.forge.rest_gists import GISTS_ETAG, GistList, with_gists
from bulkbackup.http.bounded import BoundedPool, Overdue, TooLarge
from bulkbackup.http.tls import raise_if_untrusted
from bulkbackup.names import check_login, is_login
from bulkbackup.redact import add_secrets, redact

log = logging.getLogger(__name__)

_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="([a-z]+)"')
# ETags are kept for users with at most this many pages (they live in the user's metadata).
MAX_ETAG_PAGES = 10
# What an ETag may look like to be kept (RFC 9110 entity-tag, bounded): it comes from the
# network and goes into metadata, space-separated, under the store's size limit.
_ETAG = re.compile(r'(W/)?"[!#-~]{1,80}"')


@dataclass
class Listing:
    """A user's repositories, all pages; ``not_modified`` when every page answered 304."""

    repos: list[dict[str, Any]] = field(default_factory=list)
    etags: list[str] = field(default_factory=list)
    not_modified: bool = False
    requests: int = 0


class GitHub:
    """The REST client (one per process): listings, a login's spelling, token proofs."""

    def __init__(
        self, settings: GitHubSettings, stop: threading.Event | None = None, pool_size: int = 4,
        broker: QuotaBroker | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        # Without a shared broker (`bulkbackup sync`), this process's own count.
        self.broker = broker or QuotaBroker(None, settings.tokens)
        add_secrets(settings.tokens)
        api = urlsplit(settings.api_url)
        self._origin = (api.scheme, api.netloc.lower())
        self._http = BoundedPool(pool_size, {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": f"bulkbackup/{__version__}",
        })

    def close(self) -> None:
        self._http.clear()

    def token_for_git(self) -> str | None:
        """A token for cloning (git is not subject to the API's rate limit), without waiting."""
        return self.broker.any_token()

    def wait_for_quota(self) -> None:
        """Wait until a token is usable (at most github.max_rate_wait_s at a time); for a
        caller that gave a RateLimited user back, so it waits holding no user."""
        self.broker.wait_ready(Resource.CORE, self.stop, self.settings.max_rate_wait_s)

    def prove_tokens(self) -> None:
        """`GET /rate_limit` (free) with each token: TokenRefused for one GitHub refuses.
        Anonymous REST needs no proof; a token known spent or paused, or an answer that
        proves nothing (unreachable, 5xx), is let through: the listings handle those."""
        url = f"{self.settings.api_url}/rate_limit"
        for tid in self.broker.token_ids:
            res = self.broker.reserve(Resource.CORE, 1, only=tid)
            if isinstance(res, Wait) or res.token is None:
                continue
            try:
                status, got, body = self._request(url, {"Authorization": f"Bearer {res.token}"},
                                                  time.monotonic() + self.settings.timeout_s)
            except (Overdue, GitHubError, urllib3.exceptions.HTTPError) as exc:
                raise_if_untrusted("GitHub's REST API", exc)
                log.warning("could not prove a token (%s): %s", url, redact(str(exc))[:200])
                continue
            self.broker.record(res, got)
            max_s = self.settings.max_rate_wait_s
            if status in (401, 403) and not self.broker.limited(res, status, got, body, max_s):
                raise self.broker.refused(res, status, body, "REST API")

    def list_repos(self, login: str, etags: Sequence[str] | None = None,
                   deadline: float | None = None) -> Listing:
        """All of ``login``'s repositories, within ``deadline`` (time.monotonic(); None:
        github.user_deadline_s from when a token is usable).

        With ``etags`` (one per page, from the last listing) pages are asked conditionally
        while they answer 304 (free under GitHub's rate limit); when all do, the listing is
        ``not_modified`` and nothing else is fetched.
        """
        check_login(login)
        if deadline is None:
            # Waiting for quota before the user's first request is this process waiting for
            # GitHub (at most max_rate_wait_s at a time), not the user being slow: the user's
            # deadline starts after it, so a rate limit does not turn user after user away.
            self.wait_for_quota()
            deadline = time.monotonic() + self.settings.user_deadline_s
        old = list(etags or [])
        out, complete = self._list(login, old, deadline)
        if not complete:
            # Earlier pages were unchanged but a later one changed: fetch all in full.
            again, _ = self._list(login, [], deadline)
            again.requests += out.requests
            return again
        if old and len(out.etags) == 0 and out.requests == len(old):
            out.not_modified = True
            out.etags = old
        elif len(out.etags) > MAX_ETAG_PAGES or not all(map(_ETAG.fullmatch, out.etags)):
            out.etags = []
        return out

    def list_gists(self, login: str, etag: str, deadline: float) -> GistList:
        """`GET /users/<login>/gists` (one request, the first 100, conditional with
        ``etag``); GitHubError when it fails (the repositories' listing stands)."""
        check_login(login)
        url = f"{self.settings.api_url}/users/{login}/gists?per_page=100"
        status, headers, body = self._get(url, etag or None, deadline)
        if status == 304 and etag:
            return GistList([], etag, not_modified=True)
        if status != 200:
            raise GitHubError(f"GET /users/{login}/gists: HTTP {status}")
        got = headers.get("ETag", "")
        return GistList(_page_items(body, f"GET /users/{login}/gists"),
                        got if _ETAG.fullmatch(got) else "")

    def login_of(self, login: str) -> str | None:
        """``login`` as GitHub spells it (`GET /users/<login>`: logins ignore case), or None
        when GitHub has no such user. One request, within github.timeout_s."""
        check_login(login)
        deadline = time.monotonic() + self.settings.timeout_s
        status, _, body = self._get(f"{self.settings.api_url}/users/{login}", None, deadline)
        if status == 404:
            return None
        if status != 200:
            raise GitHubError(f"GET /users/{login}: HTTP {status}")
        try:
            spelled = orjson.loads(body).get("login")
        except (orjson.JSONDecodeError, AttributeError):
            spelled = None
        if not is_login(spelled) or spelled.lower() != login.lower():
            raise GitHubError(f"GET /users/{login}: the answer names another user or none")
        return str(spelled)

    def _list(self, login: str, old: list[str], deadline: float) -> tuple[Listing, bool]:
        """The pages, asked conditionally with ``old``; (listing, False) when a page changed
        after unchanged ones (then all pages must be fetched again in full)."""
        query = urlencode({"per_page": self.settings.page_size, "type": "owner"})
        first = f"{self.settings.api_url}/users/{login}/repos?{query}"
        what = f"GET /users/{login}/repos"
        out = Listing()
        seen: set[str] = set()
        url: str | None = first
        page = 0
        listing_bytes = 0
        while url is not None:
            if url in seen:
                raise GitHubError(f"{what}: pagination loops (page {page + 1} is a page "
                                  "already fetched)")
            if page >= self.settings.max_pages:
                raise GitHubError(f"{what}: more than {self.settings.max_pages} pages "
                                  "(github.max_pages)")
            seen.add(url)
            conditional = page < len(old) and len(out.repos) == 0
            status, headers, body = self._get(url, old[page] if conditional else None, deadline)
            out.requests += 1
            if status == 304 and conditional:
                page += 1
                url = f"{first}&page={page + 1}" if page < len(old) else None
                continue
            if status == 404:
                raise UserGone(f"user {login} not found on GitHub (404)")
            if status != 200:
                raise GitHubError(f"{what}: HTTP {status}")
            if page > 0 and not out.repos:
                return out, False
            listing_bytes += len(body)
            if listing_bytes > self.settings.max_listing_mb << 20:
                raise GitHubError(f"{what}: listing larger than github.max_listing_mb "
                                  f"({self.settings.max_listing_mb} MB)")
            out.repos.extend(_page_items(body, what))
            out.etags.append(headers.get("ETag", ""))
            page += 1
            url = self._next_link(headers.get("Link", ""))
        return out, True

    def get(self, url: str, etag: str | None, deadline: float
            ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """One API GET as a listing's (quota, retries, bounds; a redirect followed on the
        API's host only): for forge/github_releases.py."""
        return self._get(url, etag, deadline)

    def next_link(self, link: str) -> str | None:
        """The `Link` header's next page, on the API's own host (else GitHubError)."""
        return self._next_link(link)

    def _next_link(self, link: str) -> str | None:
        for url, rel in _LINK.findall(link):
            if rel == "next":
                return self._same_origin(str(url))
        return None

    def _same_origin(self, url: str) -> str:
        """Untrusted links (pagination, redirects) are followed, with the token, only on the
        API's own scheme and host."""
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise GitHubError(f"refusing a link to another host: {parts.netloc[:100]}")
        return url

    def _get(
        self, url: str, etag: str | None, deadline: float
    ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """GET with rate-limit waits and bounded retries; returns (status, headers, body)."""
        failures = 0
        redirects = 0
        while True:
            if self.stop.is_set():
                raise Interrupted("stopping")
            if time.monotonic() >= deadline:
                raise GitHubError(f"listing took longer than github.user_deadline_s "
                                  f"({self.settings.user_deadline_s:g}s)")
            res = self.broker.acquire(Resource.CORE, 1, self.stop,
                                      self.settings.max_rate_wait_s, deadline)
            headers = {}
            if res.token:
                headers["Authorization"] = f"Bearer {res.token}"
            if etag:
                headers["If-None-Match"] = etag
            try:
                status, got, body = self._request(url, headers, deadline)
            except Overdue:
                failures += 1
                self._retry_or_raise(failures, "GitHub API too slow: no whole answer within "
                                     f"{self.settings.timeout_s:g}s", deadline)
                continue
            except urllib3.exceptions.HTTPError as exc:
                raise_if_untrusted("GitHub's REST API", exc)
                failures += 1
                reason = redact(f"{type(exc).__name__}: {exc}")
                self._retry_or_raise(failures, f"GitHub API unreachable: {reason}", deadline)
                continue
            self.broker.record(res, got)
            if self.broker.limited(res, status, got, body, self.settings.max_rate_wait_s):
                continue
            if status >= 500:
                failures += 1
                self._retry_or_raise(failures, f"GitHub API answered HTTP {status}", deadline)
                continue
            if status in (401, 403):  # the token, not the user: no user's failure
                raise self.broker.refused(res, status, body, "REST API")
            if status in (301, 302, 307, 308) and redirects < 3:
                # A renamed user: follow, but only on the API's own host (the token goes too).
                redirects += 1
                url = self._same_origin(urljoin(url, got.get("Location", "")))
                continue
            return status, got, body

    def _request(
        self, url: str, headers: dict[str, str], deadline: float
    ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """One GET, whole within timeout_s (and the user's deadline) and max_response_mb."""
        ends = min(time.monotonic() + self.settings.timeout_s, deadline)
        limit_mb = self.settings.max_response_mb
        try:
            return self._http.get(url, headers, ends, limit_mb << 20)
        except TooLarge:
            raise GitHubError(f"GitHub API answer larger than github.max_response_mb "
                              f"({limit_mb} MB)") from None

    def _retry_or_raise(self, failures: int, message: str, deadline: float) -> None:
        if failures > self.settings.max_retries:
            raise GitHubError(message)
        delay = self.settings.backoff_s * 2 ** (failures - 1) * random.uniform(0.5, 1.5)
        delay = max(min(delay, deadline - time.monotonic()), 0.0)
        log.info("%s; retry %d in %.1fs", message, failures, delay)
        if self.stop.wait(delay):
            raise Interrupted("stopping")


def _page_items(body: bytes, what: str) -> list[dict[str, Any]]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GitHubError(f"{what}: invalid JSON") from None
    if not isinstance(items, list):
        raise GitHubError(f"{what}: expected a JSON array")
    return [i for i in items if isinstance(i, dict)]


class RestLister:
    """The `Lister` of GitHub REST (forge/listing.py): a batch of one, each owner's pages
    asked with the ETags of its last clean listing (`conditions`, read from the archive).

    A step lists the first owner queued, within `deadline` (github.user_deadline_s from the
    worker's wait for quota, as REST always did); a rate limit past it, a stop or a refused
    token leaves that owner first in line."""

    batching = Batching.ONE

    def __init__(self, github: GitHub, conditions: Conditions = no_conditions,
                 gists: bool = False) -> None:
        """``gists``: each owner's public gists are listed too (one more request, sent with
        its last ETag: a 304 is free), run.gists."""
        self.github = github
        self.conditions = conditions
        self.gists = gists
        self._queue: deque[str] = deque()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, logins: Sequence[str]) -> list[OwnerListing]:
        admitted, refused = admit(logins, self._queue)
        self._queue.extend(admitted)
        return refused

    def step(self, deadline: float | None) -> list[OwnerListing]:
        if not self._queue:
            return []
        login = self._queue[0]
        # Rate limits, a stop, a refused token: raised, the owner stays first in line.
        listing = self._list(login, deadline)
        self._queue.popleft()
        return [listing]

    def _list(self, login: str, deadline: float | None) -> OwnerListing:
        conditions = self.conditions(login)
        # The gist list's ETag rides with the pages' (GISTS_ETAG-prefixed, last).
        etags = [e for e in conditions if not e.startswith(GISTS_ETAG)]
        gist_etag = next((e.removeprefix(GISTS_ETAG) for e in conditions
                          if e.startswith(GISTS_ETAG)), "")
        host = self.github.settings.clone_host
        try:
            got = self.github.list_repos(login, etags, deadline)
        except UserGone as exc:
            return OwnerListing.failed(login, ListingOutcome.GONE, str(exc))
        except GitHubError as exc:  # the API failing after retries, or a listing's bounds
            return OwnerListing.failed(login, ListingOutcome.FAILED, str(exc))
        if not self.gists:
            if got.not_modified:
                return OwnerListing(login, ListingOutcome.NOT_MODIFIED, etags=tuple(got.etags))
            return OwnerListing.listed(login, got.repos, host, got.etags)
        return with_gists(self.github, login, got, gist_etag, deadline)

    def take_back(self) -> TakenBack:
        logins = list(self._queue)
        self._queue.clear()
        return TakenBack(tuple(logins[:1]), tuple(logins[1:]))

    def wait_ready(self) -> None:
        self.github.wait_for_quota()

    def close(self) -> None:
        self.github.close()
