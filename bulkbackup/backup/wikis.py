"""A repository's wiki, archived with the one writer under the name `<repo>.wiki` (its keys
`<login>/<repo>.wiki.bundle`, `.wiki.zip`, `.wiki.bundle.d/...`: archive/layout.py).

The repository's `pushed_at` does not move when its wiki is edited, so the wiki's refs say
whether it changed: one ref listing of `<repo>.wiki.git` per pass (packfetch.remote_refs),
compared with the refs of the wiki's latest stored part (its bundle header). Equal: nothing
else is done (no write). A 404 is "no wiki" (GitHub's wiki repository exists once a page was
saved): nothing is stored and it cost that one request. Otherwise the writer stores it as any
repository (an increment on its chain, or a full archive); a wiki that fails to archive has
its `Error` on its own bundle, and the repository's archive is not touched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bulkbackup.archive import chains, layout
from bulkbackup.archive.metadata import ERROR
from bulkbackup.archive.writer import ArchiveWriter, Change, WriteOutcome, Written
from bulkbackup.config import RunSettings
from bulkbackup.errors import ArchiveError, GitError, StoreError
from bulkbackup.git.auth import GitAuth
from bulkbackup.git.bundles import stored_header
from bulkbackup.git.packfetch import remote_refs
from bulkbackup.store.base import Head
from bulkbackup.store.fenced import FencedStore
from bulkbackup.timeutil import format_rfc3339, now


class WikiOutcome(enum.Enum):
    NONE = "no wiki"  # the wiki's repository does not exist (404) or has no refs
    UNCHANGED = "unchanged"  # its refs are the stored ones
    ARCHIVED = "archived"
    FAILED = "failed"  # recorded on the wiki's bundle


@dataclass(frozen=True)
class WikiResult:
    outcome: WikiOutcome
    written: Written | None = None  # what the writer did (ARCHIVED, FAILED)


def wiki_url(clone_url: str) -> str:
    """GitHub's wiki repository: `<clone_url without .git>.wiki.git`."""
    return clone_url.removesuffix(".git") + ".wiki.git"


def sync_wiki(writer: ArchiveWriter, store: FencedStore, login: str, repo: str,
              clone_url: str, auth: GitAuth, run: RunSettings) -> WikiResult:
    """Archive ``repo``'s wiki if it changed since the stored one (see the module's doc)."""
    name = layout.wiki_name(repo)
    url = wiki_url(clone_url)
    head = store.head(layout.bundle_key(login, name))
    try:
        advert = remote_refs(url, run, auth)
    except GitError as exc:
        return _failed(writer, store, login, name, head, str(exc))
    if advert is None or (not advert.refs and head is None):
        return WikiResult(WikiOutcome.NONE)
    if head is not None and _same_refs(store, login, name, head, advert.refs):
        return WikiResult(WikiOutcome.UNCHANGED)
    stamp = now()
    branch = (advert.head_target or "").removeprefix("refs/heads/") or None
    # The wiki has no pushed_at: the time it was seen changed stands for both times.
    change = Change(url, branch, format_rfc3339(stamp), format_rfc3339(stamp), stamp)
    written = writer.write(store, login, name, change, head, auth)
    if written.outcome is WriteOutcome.FAILED:
        return WikiResult(WikiOutcome.FAILED, written)
    return WikiResult(WikiOutcome.ARCHIVED, written)


def _same_refs(store: FencedStore, login: str, name: str, head: Head,
               refs: dict[str, str]) -> bool:
    """Are ``refs`` the stored wiki's (its latest part's header)? A wiki whose last attempt
    failed, or whose archive cannot be read, is archived again."""
    if head.size == 0 or head.get(ERROR):
        return False
    n = chains.committed(head)
    latest = (layout.bundle_key(login, name) if n == 0
              else layout.part_key(login, name, chains.chain_of(head), n))
    try:
        return stored_header(store, latest).refs == refs
    except (ArchiveError, StoreError, ValueError):
        return False


def _failed(writer: ArchiveWriter, store: FencedStore, login: str, name: str,
            head: Head | None, error: str) -> WikiResult:
    return WikiResult(WikiOutcome.FAILED, writer.record_failure(store, login, name, head, error))
