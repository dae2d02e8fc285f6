"""GitHub REST client: list a user's repositories, with token rotation and rate limits.

One urllib3 pool per process. A rate limit is waited out (or another token used); it never
fails a user. 5xx answers and connection errors get bounded retries with backoff and jitter.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import urllib3

from bulkbackup import __version__
from bulkbackup.config import GitHubSettings
from bulkbackup.errors import GitHubError, Interrupted, UserGone
from bulkbackup.names import check_login
from bulkbackup.redact import add_secrets, redact

log = logging.getLogger(__name__)

_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="([a-z]+)"')
PER_PAGE = 100
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


class TokenPool:
    """Tokens in rotation; each with the time until which it is known to be exhausted."""

    def __init__(self, tokens: tuple[str, ...], stop: threading.Event) -> None:
        self._tokens: list[str | None] = list(tokens) or [None]
        self._blocked_until: dict[int, float] = {}
        self._next = 0
        self._stop = stop

    def acquire(self, max_wait_s: float) -> tuple[int, str | None]:
        """A usable token (index, value), waiting for the earliest reset if all are exhausted."""
        while True:
            now = time.time()
            n = len(self._tokens)
            for k in range(n):
                i = (self._next + k) % n
                if self._blocked_until.get(i, 0.0) <= now:
                    self._next = (i + 1) % n
                    return i, self._tokens[i]
            until = min(self._blocked_until.values())
            wait = min(max(until - now, 0.0) + random.uniform(0.5, 2.0), max_wait_s)
            which = "the token" if n == 1 else f"all {n} tokens"
            log.warning(
                "GitHub rate limit: %s exhausted; waiting %.0fs (until %s UTC)",
                which, wait, time.strftime("%H:%M:%S", time.gmtime(now + wait)),
            )
            if self._stop.wait(wait):
                raise Interrupted("stopping while waiting for the rate limit")
            # After a capped wait, try again rather than trusting a far-away reset.
            self._blocked_until = {i: t for i, t in self._blocked_until.items() if t > time.time()}

    def any_token(self) -> str | None:
        """A token for git (not subject to the API's rate limit), without waiting."""
        return self._tokens[self._next % len(self._tokens)]

    def block(self, index: int, until: float) -> None:
        self._blocked_until[index] = max(self._blocked_until.get(index, 0.0), until)


class GitHub:
    def __init__(
        self, settings: GitHubSettings, stop: threading.Event | None = None, pool_size: int = 4
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.tokens = TokenPool(settings.tokens, self.stop)
        add_secrets(settings.tokens)
        api = urlsplit(settings.api_url)
        self._origin = (api.scheme, api.netloc.lower())
        self._http = urllib3.PoolManager(
            maxsize=pool_size,
            retries=False,
            timeout=urllib3.Timeout(connect=min(settings.timeout_s, 10.0), read=settings.timeout_s),
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"bulkbackup/{__version__}",
            },
        )
        self.requests = 0

    def close(self) -> None:
        self._http.clear()

    def token_for_git(self) -> str | None:
        """A token for cloning (git is not subject to the API's rate limit), without waiting."""
        return self.tokens.any_token()

    def list_repos(self, login: str, etags: list[str] | None = None) -> Listing:
        """All of ``login``'s repositories.

        With ``etags`` (one per page, from the last listing) pages are asked conditionally
        while they answer 304 (free under GitHub's rate limit); when all do, the listing is
        ``not_modified`` and nothing else is fetched.
        """
        check_login(login)
        query = urlencode({"per_page": PER_PAGE, "type": "owner"})
        first = f"{self.settings.api_url}/users/{login}/repos?{query}"
        old = list(etags or [])
        out = Listing()
        url: str | None = first
        page = 0
        while url is not None:
            conditional = page < len(old) and len(out.repos) == 0
            status, headers, body = self._get(url, old[page] if conditional else None)
            out.requests += 1
            if status == 304 and conditional:
                page += 1
                url = f"{first}&page={page + 1}" if page < len(old) else None
                continue
            if status == 404:
                raise UserGone(f"user {login} not found on GitHub (404)")
            if status != 200:
                raise GitHubError(f"GET /users/{login}/repos: HTTP {status}")
            if page > 0 and not out.repos:
                # Earlier pages were unchanged but this one changed: fetch all in full.
                again = self.list_repos(login)
                again.requests += out.requests
                return again
            try:
                items = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise GitHubError(f"GET /users/{login}/repos: invalid JSON") from None
            if not isinstance(items, list):
                raise GitHubError(f"GET /users/{login}/repos: expected a JSON array")
            out.repos.extend(i for i in items if isinstance(i, dict))
            out.etags.append(headers.get("ETag", ""))
            page += 1
            url = self._next_link(headers.get("Link", ""))
        if old and page == len(old) and not out.etags:
            out.not_modified = True
            out.etags = old
        elif len(out.etags) > MAX_ETAG_PAGES or not all(map(_ETAG.fullmatch, out.etags)):
            out.etags = []
        return out

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

    def _get(self, url: str, etag: str | None) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """GET with rate-limit waits and bounded retries; returns (status, headers, body)."""
        failures = 0
        redirects = 0
        while True:
            if self.stop.is_set():
                raise Interrupted("stopping")
            index, token = self.tokens.acquire(self.settings.max_rate_wait_s)
            headers = {}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if etag:
                headers["If-None-Match"] = etag
            try:
                self.requests += 1
                resp = self._http.request("GET", url, headers=headers, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                failures += 1
                reason = redact(f"{type(exc).__name__}: {exc}")
                self._retry_or_raise(failures, f"GitHub API unreachable: {reason}")
                continue
            status = resp.status
            if status in (403, 429) and self._rate_limited(resp, index):
                continue
            if status >= 500:
                failures += 1
                self._retry_or_raise(failures, f"GitHub API answered HTTP {status}")
                continue
            if status in (401, 403):
                raise GitHubError(f"GitHub API refused the request: HTTP {status}")
            if status in (301, 302, 307, 308) and redirects < 3:
                # A renamed user: follow, but only on the API's own host (the token goes too).
                redirects += 1
                url = self._same_origin(urljoin(url, resp.headers.get("Location", "")))
                continue
            return status, resp.headers, resp.data

    def _rate_limited(self, resp: urllib3.BaseHTTPResponse, index: int) -> bool:
        """Block the token until the limit resets; False if this 403 is not a rate limit."""
        h = resp.headers
        now = time.time()
        retry_after = h.get("Retry-After")
        if retry_after is not None:
            try:
                self.tokens.block(index, now + max(float(retry_after), 1.0))
            except ValueError:
                self.tokens.block(index, now + 60)
            return True
        if h.get("X-RateLimit-Remaining") == "0":
            try:
                reset = float(h.get("X-RateLimit-Reset", "0"))
            except ValueError:
                reset = 0.0
            self.tokens.block(index, reset if reset > now else now + 60)
            return True
        if resp.status == 429 or b"rate limit" in resp.data[:500].lower():
            # A secondary limit without Retry-After: GitHub asks for at least a minute.
            self.tokens.block(index, now + 60)
            return True
        return False

    def _retry_or_raise(self, failures: int, message: str) -> None:
        if failures > self.settings.max_retries:
            raise GitHubError(message)
        delay = self.settings.backoff_s * 2 ** (failures - 1) * random.uniform(0.5, 1.5)
        log.info("%s; retry %d in %.1fs", message, failures, delay)
        if self.stop.wait(delay):
            raise Interrupted("stopping")
