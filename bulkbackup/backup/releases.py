"""A repository's releases: the list as `<login>/<repo>.releases.json` and each asset once as
`<login>/<repo>.releases/<tag>/<name>` (archive/layout.py).

When the list is asked for (`wanted`), at most one request per repository and pass:
- GraphQL's listing gives the latest release's tag (`latestRelease`, no extra point): none,
  nothing is asked; else the list is asked when the repository itself changed this pass,
  when no list is stored, when the stored one has an `Error`, or when the tag is not the one
  stored with the list (`LatestRelease`). A release edited, or a prerelease added, without
  any of these is seen at the repository's next change.
- REST's listing says nothing of releases: the list is asked when the repository changed
  this pass (its archive was written: a new release's tag is a push), conditionally with the
  stored list's ETag (a 304 is free).
The list is stored only when its content changed (`ContentSha256`), and never when there has
been no release (REST's listing cannot say: no object is written for such a repository).
Each asset is fetched once: one listing of `<login>/<repo>.releases/` finds those stored
(same key and size: not asked again). An asset above `run.max_asset_mb` is recorded, not
fetched: a zero-byte object at its key with an `Error` (not written twice). Other failures
(a download refused or cut short, a tag or name that is not a safe key segment) are an
asset's zero-byte `Error`, or, when it has no key, only in the list's `Error` (which names
every asset not stored); none fails the repository. A list that could not be read is asked
again at the next pass (its `LatestRelease` is not updated; REST: at the repository's next
change).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import (
    ASSET_ID,
    CONTENT_SHA256,
    ERROR,
    LATEST_RELEASE,
    RELEASES_ETAG,
    fitted,
)
from bulkbackup.config import Settings
from bulkbackup.errors import InvalidName
from bulkbackup.forge.github_releases import list_releases
from bulkbackup.forge.github_rest import GitHub
from bulkbackup.forge.listing import RepoInfo
from bulkbackup.forge.release_assets import download_asset
from bulkbackup.git.auth import GitAuth
from bulkbackup.http.bounded import BoundedPool
from bulkbackup.store.base import Head
from bulkbackup.store.fenced import FencedStore

log = logging.getLogger(__name__)

MAX_LIST_BYTES = 64 << 20  # a stored list read back (MAX_PAGES of bounded releases)
MAX_ERROR_CHARS = 1500  # the list's Error (the store's metadata limit is shared)


@dataclass
class ReleasesResult:
    asked: bool = False  # the list was asked for (one request, maybe a free 304)
    stored_list: bool = False  # the list changed and was stored
    assets: int = 0  # assets stored by this pass
    bytes: int = 0
    failures: list[str] = field(default_factory=list)  # `<tag>/<name>: <reason>`


def wanted(repo: RepoInfo, changed: bool, head: Head | None) -> bool:
    """Should the release list be asked for (see the module's doc)?"""
    if repo.latest_release is None:  # REST: only the repository's change says
        return changed
    if not repo.latest_release:
        return False
    return (changed or head is None or not head.get(CONTENT_SHA256)
            or head.get(LATEST_RELEASE) != repo.latest_release)


def sync_releases(store: FencedStore, api: GitHub, settings: Settings, login: str,
                  repo: RepoInfo, auth: GitAuth, scratch: Path) -> ReleasesResult:
    """Ask for ``repo``'s releases and store what changed (the caller decided: `wanted`)."""
    result = ReleasesResult(asked=True)
    key = layout.releases_key(login, repo.name)
    head = store.head(key)
    got = list_releases(api, login, repo.name, head.get(RELEASES_ETAG) if head else "")
    meta = {LATEST_RELEASE: repo.latest_release or "", RELEASES_ETAG: got.etag}
    if got.error:
        result.failures.append(got.error)
        if head is not None:
            store.replace_metadata(key, layout.updated_metadata(head, {ERROR: got.error}))
        else:
            store.put_bytes(key, b"[]", fitted({**meta, ERROR: got.error}))
        return result
    if got.not_modified and head is not None and not head.get(ERROR):
        if head.get(LATEST_RELEASE) != meta[LATEST_RELEASE]:
            store.replace_metadata(key, layout.updated_metadata(head, meta))
        return result
    releases = got.releases
    if not releases and head is None:
        return result  # none (REST asks without knowing): no object for a repository
    if got.not_modified and head is not None:  # an Error to clear: the stored list's assets
        releases = _stored_list(store, key)
    _assets(store, settings, login, repo.name, releases, auth, scratch, result)
    body = orjson.dumps(releases)
    meta[CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
    meta[ERROR] = _error_text(result.failures)
    if head is None or head.get(CONTENT_SHA256) != meta[CONTENT_SHA256]:
        store.put_bytes(key, body, fitted(meta))
        result.stored_list = True
    elif any(head.get(k) != v for k, v in meta.items()):
        store.replace_metadata(key, layout.updated_metadata(head, meta))
    return result


def _stored_list(store: FencedStore, key: str) -> list[dict[str, Any]]:
    with store.open(key) as f:
        data = f.read(MAX_LIST_BYTES + 1)
    try:
        loaded = orjson.loads(data)
    except orjson.JSONDecodeError:  # damaged, or larger than any list stored: read anew
        return []
    return [r for r in loaded if isinstance(r, dict)] if isinstance(loaded, list) else []


def _assets(store: FencedStore, settings: Settings, login: str, repo: str,
            releases: list[dict[str, Any]], auth: GitAuth, scratch: Path,
            result: ReleasesResult) -> None:
    """Fetch and store each asset not stored yet (see the module's doc)."""
    listed = {i.key: i.size for i in store.list(layout.assets_prefix(login, repo))}
    cap = settings.run.max_asset_mb << 20
    pool = BoundedPool(1, num_pools=4)
    try:
        for release in releases:
            for asset in release.get("assets") or []:
                store.fence.check()  # abandon early: the user may not be ours any more
                _asset(store, settings, login, repo, release, asset, listed, cap, auth,
                       scratch, pool, result)
    finally:
        pool.clear()


def _asset(store: FencedStore, settings: Settings, login: str, repo: str,
           release: dict[str, Any], asset: dict[str, Any], listed: dict[str, int], cap: int,
           auth: GitAuth, scratch: Path, pool: BoundedPool, result: ReleasesResult) -> None:
    tag, name = release.get("tag_name"), asset.get("name")
    what = f"{str(tag)[:100]}/{str(name)[:100]}"
    try:
        key = layout.asset_key(login, repo, str(tag), str(name))
    except InvalidName as exc:
        result.failures.append(f"{what}: {exc}")
        return
    size, url = asset.get("size"), asset.get("browser_download_url")
    if not isinstance(size, int) or size < 0 or not isinstance(url, str):
        _record(store, key, listed, asset, f"{what}: no size or download URL", result)
        return
    if listed.get(key) == size and (size > 0 or key in listed):
        return  # stored before (an empty asset too: zero bytes, no Error)
    if size > cap:
        _record(store, key, listed, asset, f"{size} bytes, above run.max_asset_mb "
                                           f"({settings.run.max_asset_mb})", result)
        return
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "asset"
    failure = download_asset(pool, settings.github, url, size, path, auth,
                             settings.run.git_timeout_s)
    if failure is not None:
        _record(store, key, listed, asset, failure.reason, result)
        return
    try:
        store.put_file(key, path, {ASSET_ID: str(asset.get("id"))})
    finally:
        path.unlink(missing_ok=True)
    result.assets += 1
    result.bytes += size


def _record(store: FencedStore, key: str, listed: dict[str, int], asset: dict[str, Any],
            reason: str, result: ReleasesResult) -> None:
    """An asset not stored: a zero-byte object with its `Error`, written once (not over a
    stored asset, nor over the marker of an earlier pass)."""
    parsed = layout.parse_key(key)
    result.failures.append(f"{parsed.tag}/{parsed.asset}: {reason}")
    log.info("%s: %s", key, reason)
    if key not in listed:
        store.put_bytes(key, b"", fitted({ASSET_ID: str(asset.get("id")), ERROR: reason}))


def _error_text(failures: list[str]) -> str:
    if not failures:
        return ""
    text = f"{len(failures)} release assets not stored: " + "; ".join(failures)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
