"""`bulkbackup show LOGIN`: the seed's six read operations for one user."""

from __future__ import annotations

from typing import Any

from bulkbackup.archive import chains, layout
from bulkbackup.archive.metadata import (
    ERROR,
    LAST_SYNC,
    LFS_ERROR,
    PUSHED_AT,
    REPORTED_REPOS,
    SYNCD_REPOS,
    UPDATED_AT,
)
from bulkbackup.archive.stored import stored_spelling
from bulkbackup.config import StoreSettings
from bulkbackup.errors import BulkbackupError
from bulkbackup.names import check_login, is_archive_name
from bulkbackup.store import Store, open_store

MAX_ASSETS_SHOWN = 50  # release assets named per repository (all are counted)


def describe(store: Store, login: str) -> dict[str, Any]:
    """The user's entry and, per repository (valid names only), last sync, sizes and last
    error; a repository's wiki is an entry of its own (`wiki_of`: its repository), listed
    right after it; `lfs_objects`/`lfs_bytes` count a repository's stored LFS objects,
    `assets`/`asset_bytes` its stored release assets (`releases_error`: those not stored);
    a gist is an entry named `gists/<id>` (`gist_of`: its id), after the repositories, and
    `gists_error` is the gist list's `Error` (gists that failed, ids refused)."""
    head = store.head(layout.user_key(login))
    if head is None:
        raise BulkbackupError(f"user {login} is not in the store")
    repos: dict[str, dict[str, Any]] = {}
    lfs: dict[str, list[int]] = {}
    assets: dict[str, list[int]] = {}  # a repository's stored release assets, and a list
    files: dict[str, list[tuple[str, str, int]]] = {}  # the first MAX_ASSETS_SHOWN of them
    gist_list = False
    for info in store.list(layout.user_prefix(login)):
        key = layout.parse_key(info.key)
        gist_list = gist_list or (key.kind is layout.Kind.GISTS and key.login == login)
        if key.kind is layout.Kind.ASSET and info.size and \
                len(shown := files.setdefault(key.repo, [])) < MAX_ASSETS_SHOWN:
            shown.append((key.tag, key.asset, info.size))
        if key.login == login and key.kind in (layout.Kind.LFS, layout.Kind.ASSET,
                                               layout.Kind.RELEASES):
            counted = (lfs if key.kind is layout.Kind.LFS else assets).setdefault(
                key.repo, [0, 0, 0])
            counted[0] += 1 if info.size and key.kind is not layout.Kind.RELEASES else 0
            counted[1] += info.size if key.kind is not layout.Kind.RELEASES else 0
            counted[2] += key.kind is layout.Kind.RELEASES
            continue
        # A key whose repository part is not a valid name (put there by hand) is no
        # repository: `show` and the user page would offer to restore or download it.
        if key.login != login or key.kind not in (
                layout.Kind.BUNDLE, layout.Kind.ZIP, layout.Kind.PART) \
                or not is_archive_name(key.repo):
            continue
        entry = repos.setdefault(key.repo, {"name": key.repo, "bundle_bytes": None,
                                            "zip_bytes": None, "increment_bytes": 0,
                                            "history_chains": 0,
                                            "wiki_of": layout.wiki_of(key.repo),
                                            "gist_of": layout.gist_of(key.repo)})
        if key.kind is layout.Kind.PART:
            entry["increment_bytes"] += info.size if key.seq else 0
            entry["history_chains"] += 0 if key.seq else 1
        else:
            entry[f"{key.kind.value}_bytes"] = info.size
    for name, entry in repos.items():
        _with_head(store, login, name, entry, lfs.get(name, [0, 0]))
        _with_releases(store, login, name, entry, assets.get(name, [0, 0, 0]))
        entry["asset_files"] = files.get(name, [])
    return {
        "login": login,
        "last_sync": head.get(LAST_SYNC) or None,
        "syncd_repos": _int(head.get(SYNCD_REPOS)),
        "reported_repos": _int(head.get(REPORTED_REPOS)),
        "error": head.get(ERROR) or None,
        # A wiki right after its repository: (`repo`, "") < (`repo`, "repo.wiki"); gists last.
        "repositories": [repos[n] for n in sorted(repos, key=lambda n: (
            layout.gist_of(n) is not None, layout.wiki_of(n) or n,
            n if layout.wiki_of(n) else ""))],
        "gists": sum(1 for r in repos.values() if r["gist_of"] and r["bundle_bytes"]),
        "gists_error": _gists_error(store, login) if gist_list else None,
    }


def _gists_error(store: Store, login: str) -> str | None:
    listed = store.head(layout.gists_key(login))
    return listed.get(ERROR) or None if listed else None


def _with_head(store: Store, login: str, name: str, entry: dict[str, Any],
               lfs: list[int]) -> None:
    """``entry`` with what its bundle's metadata says, and its LFS objects' count and bytes."""
    bundle = (store.head(layout.bundle_key(login, name))
              if entry["bundle_bytes"] is not None else None)
    entry.update(
        last_sync=bundle.get(LAST_SYNC) if bundle else None,
        pushed_at=bundle.get(PUSHED_AT) or None if bundle else None,
        updated_at=bundle.get(UPDATED_AT) or None if bundle else None,
        error=bundle.get(ERROR) or None if bundle else None,
        increments=chains.committed(bundle) if bundle else 0,
        chain=chains.chain_of(bundle) if bundle and bundle.size else None,
        lfs_objects=lfs[0], lfs_bytes=lfs[1],
        lfs_error=bundle.get(LFS_ERROR) or None if bundle else None,
    )


def _with_releases(store: Store, login: str, name: str, entry: dict[str, Any],
                   counted: list[int]) -> None:
    """``entry`` with its release assets' count and bytes, and its release list's `Error`
    (the assets not stored: backup/releases.py)."""
    listed = store.head(layout.releases_key(login, name)) if counted[2] else None
    entry.update(assets=counted[0], asset_bytes=counted[1],
                 releases_error=listed.get(ERROR) or None if listed else None)


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def describe_user(settings: StoreSettings, login: str) -> dict[str, Any]:
    """`describe` on a store opened read-only (no bucket or folder is created)."""
    check_login(login)
    store = open_store(settings, create=False)
    try:
        return describe(store, stored_spelling(store, login))  # logins ignore case
    finally:
        store.close()
