"""A release asset's download, with the token rules of git and GitHub's hosts only.

An asset is downloaded from its `browser_download_url` (not the API's asset URL: no API
quota is spent). Rules:
- that URL must be http(s) on the git host or the API's host (github.clone_host, api_url),
  without credentials; any other is refused (recorded, nothing sent);
- the token goes with it only as git would send it there (GitAuth: the git host, its
  schemes); GitHub answers 302 to its asset storage (objects.githubusercontent.com,
  release-assets.githubusercontent.com: `github.asset_hosts`), a redirect that is followed
  WITHOUT any token, only to the git or API host or a host of `github.asset_hosts`, at most
  MAX_REDIRECTS times;
- the body is streamed to a file, at most the size the API declared (http/bounded.py: a
  deadline of run.git_timeout_s, a per-read timeout), and kept only when it is that size.
A failure is one line (`AssetFailure`), never an exception for the other assets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3

from bulkbackup.config import GitHubSettings
from bulkbackup.git.auth import GitAuth
from bulkbackup.http.bounded import BoundedPool, Overdue, SlowRead, TooLarge
from bulkbackup.redact import redact

MAX_REDIRECTS = 3
READ_S = 120.0  # one socket read waiting longer is a stall


@dataclass(frozen=True)
class AssetFailure:
    reason: str


def _host(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return ""
    return parts.netloc.lower()


def download_hosts(gh: GitHubSettings) -> set[str]:
    """Where a `browser_download_url` may be (the token may go there, as git's rule says)."""
    return {gh.clone_host, urlsplit(gh.api_url).netloc.lower()} - {""}


def download_asset(pool: BoundedPool, gh: GitHubSettings, url: str, size: int, dest: Path,
                   auth: GitAuth, timeout_s: float) -> AssetFailure | None:
    """Stream the asset at ``url`` (``size`` bytes, as the API says) to ``dest``; None when
    ``dest`` holds it whole, else why not (``dest`` removed)."""
    if _host(url) not in download_hosts(gh):
        return AssetFailure(f"refusing download URL on another host: {_text(url)!r}")
    ends = time.monotonic() + timeout_s
    allowed = download_hosts(gh) | {h.lower() for h in gh.asset_hosts}
    token = auth.authorization(url)
    headers = {"Authorization": token} if token else {}
    try:
        for _ in range(MAX_REDIRECTS + 1):
            with pool.open("GET", url, headers, ends=ends, max_bytes=size,
                           read_s=READ_S) as answer:
                if answer.status in (301, 302, 303, 307, 308):
                    url = urljoin(url, answer.headers.get("Location", ""))
                    if _host(url) not in allowed:
                        return _failed(dest, f"refusing a redirect to {_text(_host(url))!r} "
                                             "(not in github.asset_hosts)")
                    headers = {}  # never the token after a redirect
                    continue
                if answer.status != 200:
                    return _failed(dest, f"download answered HTTP {answer.status}")
                with dest.open("wb") as out:
                    for chunk in iter(answer.read1, b""):
                        out.write(chunk)
                if answer.size != size:
                    return _failed(dest, f"{answer.size} bytes downloaded, the API says {size}")
                return None
        return _failed(dest, f"more than {MAX_REDIRECTS} redirects")
    except TooLarge:
        return _failed(dest, f"the download is larger than the {size} bytes the API says")
    except (Overdue, SlowRead, urllib3.exceptions.HTTPError, OSError) as exc:
        return _failed(dest, f"download failed: {_text(redact(str(exc) or type(exc).__name__))}")


def _failed(dest: Path, reason: str) -> AssetFailure:
    dest.unlink(missing_ok=True)
    return AssetFailure(reason)


def _text(value: object) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in str(value)[:200]).split())
