"""A restored repository's releases, beside its mirror: `<to>/<login>/<repo>.releases.json`
(the stored list) and each stored asset as `<to>/<login>/<repo>.releases/<tag>/<name>`.

The assets' tags and names were checked as safe path segments before they became keys
(names.is_key_segment) and are checked again here (layout.parse_key): a key that is not
one (put there by hand) is not written. A zero-byte asset with an `Error` (not stored: too
large, refused) is left out. Assets are never deleted from the store, so `restore --at TIME`
gets them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR
from bulkbackup.archive.stored import download
from bulkbackup.store import Store


def restore_releases(store: Store, login: str, repo: str, parent: Path,
                     progress: bool = False) -> int:
    """Write ``login/repo``'s stored release list and assets under ``parent`` (the user's
    folder of the restore); how many assets."""
    key = layout.releases_key(login, repo)
    head = store.head(key)
    if head is not None and head.size > 0:
        download(store, key, parent / f"{repo}{layout.RELEASES_LIST_SUFFIX}", head.size,
                 progress)
    count = 0
    for info in store.list(layout.assets_prefix(login, repo)):
        parsed = layout.parse_key(info.key)
        if parsed.kind is not layout.Kind.ASSET or parsed.login != login \
                or parsed.repo != repo:
            continue
        if info.size == 0:
            marker = store.head(info.key)
            if marker is None or marker.get(ERROR):
                continue  # not stored: its Error says why
        dest = parent / f"{repo}{layout.RELEASES_SUFFIX}" / parsed.tag / parsed.asset
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        download(store, info.key, partial, info.size, progress)
        os.replace(partial, dest)
        count += 1
    return count
