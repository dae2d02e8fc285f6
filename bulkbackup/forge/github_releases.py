"""A repository's releases over GitHub REST (`GET /repos/<login>/<repo>/releases`), bounded:
at most MAX_PAGES pages of 100 (the newest releases first, as GitHub lists them), each
release's fields kept as `KEPT` names them, its `body` cut to MAX_BODY_CHARS, at most
MAX_ASSETS assets a release. The request is the REST client's (forge/github_rest.py: the
quota broker, retries, bounds, a redirect followed on the API's host only); the list is
asked conditionally with the ETag of the one it last stored (a 304 is free under GitHub's
rate limit). A rate limit that would keep the user's sync waiting past 4 x
github.timeout_s is the list's error (asked again next pass), never a wait for the reset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from bulkbackup.errors import GitHubError, RateLimited
from bulkbackup.forge.github_rest import GitHub

MAX_PAGES = 5  # 500 releases, the newest
MAX_BODY_CHARS = 8000
MAX_TEXT_CHARS = 1000  # a name, a tag, a URL
MAX_ASSETS = 200  # per release
KEPT = ("id", "tag_name", "name", "body", "created_at", "published_at", "draft", "prerelease")
ASSET_KEPT = ("id", "name", "size", "content_type", "browser_download_url")


@dataclass
class ReleaseList:
    """The kept fields of the releases; ``not_modified``: the ETag given still holds."""

    releases: list[dict[str, Any]] = field(default_factory=list)
    etag: str = ""  # the list's ETag when it is one page (else "": asked in full next time)
    not_modified: bool = False
    error: str = ""  # the list could not be read (nothing else is)
    requests: int = 0


def list_releases(gh: GitHub, login: str, repo: str, etag: str) -> ReleaseList:
    """``login/repo``'s releases (see the module's doc); a failure is its ``error``."""
    query = urlencode({"per_page": 100})
    url: str | None = f"{gh.settings.api_url}/repos/{quote(login)}/{quote(repo)}/releases?{query}"
    # Short: a user's sync waits for it (a rate limit past it is this list's error, asked
    # again at the next pass), whatever github.user_deadline_s allows a listing.
    deadline = time.monotonic() + min(gh.settings.user_deadline_s, 4 * gh.settings.timeout_s)
    out = ReleaseList()
    try:
        while url is not None and out.requests < MAX_PAGES:
            status, headers, body = gh.get(url, etag if out.requests == 0 else None, deadline)
            out.requests += 1
            if status == 304 and out.requests == 1:
                return ReleaseList(etag=etag, not_modified=True, requests=1)
            if status != 200:
                return ReleaseList(error=f"GET releases: HTTP {status}", requests=out.requests)
            out.releases += [kept(r) for r in _items(body)]
            out.etag = str(headers.get("ETag", ""))[:200] if out.requests == 1 else ""
            url = gh.next_link(headers.get("Link", ""))
    except (GitHubError, RateLimited) as exc:
        return ReleaseList(error=f"GET releases: {exc}"[:500], requests=out.requests + 1)
    if url is not None:
        out.etag = ""  # more than MAX_PAGES: the newest kept, never taken as unchanged
    return out


def _items(body: bytes) -> list[dict[str, Any]]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GitHubError("invalid JSON") from None
    if not isinstance(items, list):
        raise GitHubError("expected a JSON array")
    return [i for i in items if isinstance(i, dict)]


def kept(release: dict[str, Any]) -> dict[str, Any]:
    """One release as stored: the KEPT fields (texts bounded) and its assets'."""
    out = {k: _bounded(release.get(k), MAX_BODY_CHARS if k == "body" else MAX_TEXT_CHARS)
           for k in KEPT}
    assets = release.get("assets")
    out["assets"] = [{k: _bounded(a.get(k), MAX_TEXT_CHARS) for k in ASSET_KEPT}
                     for a in (assets if isinstance(assets, list) else [])[:MAX_ASSETS]
                     if isinstance(a, dict)]
    return out


def _bounded(value: Any, max_chars: int) -> Any:
    """Scalars as given (texts cut), anything else null: nothing unbounded is stored."""
    if isinstance(value, str):
        return value[:max_chars]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return None
