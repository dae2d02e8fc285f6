"""The stand-in's releases: `GET /repos/<login>/<repo>/releases` (REST, paged, ETag and 304),
each asset's `browser_download_url` on the git host (`/<login>/<repo>/releases/download/
<tag>/<name>`) answering 302 to the "storage" host (the same server under its other name,
lfs.other_host, as GitHub's objects.githubusercontent.com) at `/release-assets/<id>`, and the
repository's `latestRelease` for GraphQL. Hostile assets by `AssetSpec.mode`.

Tests read `ForgeState.asset_seen`: (host, path, Authorization or None) of every download.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from bulkbackup.testing.lfs import other_host
from bulkbackup.testing.repos import BASE_TIME, rfc3339

STORAGE_PATH = "/release-assets/"
# Modes of an asset:
NORMAL = "normal"  # downloaded through a redirect to the storage host
HUGE = "huge"  # the API declares 50 GB (never asked for under any sane cap)
ELSEWHERE = "elsewhere"  # its download URL is on a host that is not GitHub's
MODES = (NORMAL, HUGE, ELSEWHERE)
ELSEWHERE_HOST = "downloads.example.invalid"


@dataclass(frozen=True)
class AssetSpec:
    name: str
    content: bytes
    mode: str = NORMAL

    @property
    def size(self) -> int:
        return 50 << 30 if self.mode == HUGE else len(self.content)


@dataclass(frozen=True)
class ReleaseSpec:
    tag: str
    name: str = ""
    body: str = ""
    assets: tuple[AssetSpec, ...] = ()
    prerelease: bool = False
    draft: bool = False


@dataclass
class Releases:
    """Every repository's releases (newest last) and every asset by id."""

    by_repo: dict[tuple[str, str], list[ReleaseSpec]] = field(default_factory=dict)
    assets: dict[int, AssetSpec] = field(default_factory=dict)
    ids: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    def add(self, login: str, repo: str, release: ReleaseSpec) -> None:
        self.by_repo.setdefault((login, repo), []).append(release)
        for asset in release.assets:
            aid = len(self.assets) + 1
            self.assets[aid] = asset
            self.ids[(login, repo, release.tag, asset.name)] = aid

    def latest(self, login: str, repo: str) -> dict[str, Any] | None:
        """GraphQL's `latestRelease`: the newest release neither draft nor prerelease."""
        for i, rel in reversed(list(enumerate(self.by_repo.get((login, repo), [])))):
            if not rel.draft and not rel.prerelease:
                return {"id": f"RE_{login}_{repo}_{i}", "tagName": rel.tag,
                        "name": rel.name or None, "publishedAt": _time(i)}
        return None

    def listing(self, login: str, repo: str, netloc: str) -> list[dict[str, Any]]:
        """The REST list, newest first (as GitHub's)."""
        out = []
        for i, rel in reversed(list(enumerate(self.by_repo.get((login, repo), [])))):
            assets = [self._asset(login, repo, rel.tag, a, netloc) for a in rel.assets]
            out.append({"id": 100 + i, "tag_name": rel.tag, "name": rel.name or rel.tag,
                        "body": rel.body, "draft": rel.draft, "prerelease": rel.prerelease,
                        "created_at": _time(i), "published_at": _time(i), "assets": assets,
                        "author": {"login": login}, "tarball_url": f"http://{netloc}/x"})
        return out

    def _asset(self, login: str, repo: str, tag: str, asset: AssetSpec, netloc: str
               ) -> dict[str, Any]:
        aid = self.ids[(login, repo, tag, asset.name)]
        host = ELSEWHERE_HOST if asset.mode == ELSEWHERE else netloc
        url = (f"http://{host}/{login}/{repo}/releases/download/{quote(tag, safe='')}/"
               f"{quote(asset.name, safe='')}")
        return {"id": aid, "name": asset.name, "size": asset.size, "label": None,
                "content_type": "application/octet-stream", "state": "uploaded",
                "download_count": 0, "browser_download_url": url}


def _time(i: int) -> str:
    return rfc3339(BASE_TIME + 3600 * (i + 1))


def list_answer(releases: Releases, login: str, repo: str, page: int, per_page: int,
                if_none_match: str, netloc: str) -> tuple[int, bytes, dict[str, str]]:
    """One page of the REST list (404 for a repository without an entry at all is the
    caller's)."""
    items = releases.listing(login, repo, netloc)
    pages = max(1, math.ceil(len(items) / per_page))
    body = json.dumps(items[(page - 1) * per_page: page * per_page]).encode()
    etag = f'W/"{hashlib.sha1(body).hexdigest()}"'
    headers = {"Content-Type": "application/json; charset=utf-8", "ETag": etag}
    if page < pages:
        base = f"http://{netloc}/repos/{login}/{repo}/releases"
        headers["Link"] = f'<{base}?per_page={per_page}&page={page + 1}>; rel="next"'
    seen = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    if etag.removeprefix("W/") in seen:
        return 304, b"", headers
    return 200, body, headers


def download_answer(releases: Releases, login: str, repo: str, tag: str, name: str,
                    netloc: str) -> tuple[int, bytes, dict[str, str]]:
    """The git host's download URL: 302 to the storage host (GitHub's way)."""
    aid = releases.ids.get((login, repo, unquote(tag), unquote(name)))
    if aid is None:
        return 404, b"Not Found\n", {}
    return 302, b"", {"Location": f"http://{other_host(netloc)}{STORAGE_PATH}{aid}"}


def storage_answer(releases: Releases, path: str) -> tuple[int, bytes, dict[str, str]]:
    tail = path[len(STORAGE_PATH):]
    asset = releases.assets.get(int(tail)) if tail.isdigit() else None
    if asset is None:
        return 404, b"Not Found\n", {}
    return 200, asset.content, {"Content-Type": "application/octet-stream"}
