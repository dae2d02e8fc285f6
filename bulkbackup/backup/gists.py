"""A user's public gists, each archived with the one writer under the name `gists/<id>` (its
keys `<login>/gists/<id>.bundle`, `.zip`, `.bundle.d/...`: archive/layout.py), and the list
as the listing gave it, `<login>/gists.json`.

The gists come with the user's listing (forge/listing.py `OwnerListing.gists`: GraphQL asks
them with the owner's first page, REST with one more request). A gist is fetched only when
its times (`updated_at`, and GraphQL's `pushed_at`) are not the ones on its stored bundle, as
a repository's; it is cloned from `<github.gist_base>/<id>.git`, never from a URL the API
gave, with git's token rules for that host (forge/git_auth.gist_auth). A gist that fails
has its `Error` on its own bundle and is named in the list's `Error`; a gist id that is not
hex is named there too and never becomes a key. Neither fails the user's repositories.

A user listed without gists that had none before (the user object's `Gists`) costs no
store request; otherwise one shallow listing of `<login>/gists/`, a HEAD per stored gist
listed, and the list written.
"""

from __future__ import annotations

import orjson

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR, GISTS, LAST_SYNC, PUSHED_AT, UPDATED_AT, fitted
from bulkbackup.archive.stored import gists as stored_gists
from bulkbackup.archive.writer import ArchiveWriter, Change, WriteOutcome
from bulkbackup.backup.results import GistsDone
from bulkbackup.config import Settings
from bulkbackup.forge.git_auth import gist_auth
from bulkbackup.forge.listing import GistEntry, GistInfo, RejectedGist
from bulkbackup.store.base import Head
from bulkbackup.store.fenced import FencedStore
from bulkbackup.timeutil import format_rfc3339, now


def gist_url(base: str, gist_id: str) -> str:
    """A gist's git repository: `<gist_base>/<id>.git` (github.com: gist.github.com)."""
    layout.gist_name(gist_id)  # ValueError unless hex: only a checked id goes in a URL
    return f"{base}/{gist_id}.git"


def unchanged(head: Head, gist: GistInfo) -> bool:
    """Is the stored bundle this state of the gist (its times; a failed or unverified one
    is fetched again)?"""
    return (bool(gist.updated_at) and head.size > 0 and not head.get(ERROR)
            and (head.get(PUSHED_AT), head.get(UPDATED_AT))
            == (gist.pushed_at or gist.updated_at, gist.updated_at))


def sync_gists(writer: ArchiveWriter, store: FencedStore, settings: Settings, login: str,
               gists: tuple[GistEntry, ...], previous: Head | None,
               token: str | None) -> GistsDone:
    """Archive the changed ones of ``login``'s listed ``gists`` and store the list (see the
    module's doc); ``previous``: the user's object before this sync."""
    done = GistsDone()
    if not gists and (previous is None or previous.get(GISTS) in ("", "0")):
        return done  # none now, none before: nothing to read or write
    stored = stored_gists(store, login) if gists else {}
    auth = gist_auth(settings.github, token)
    for gist in gists:
        store.fence.check()  # no clone for a user that is not ours
        if isinstance(gist, RejectedGist):
            done.failures.append(gist.error)
            continue
        name = layout.gist_name(gist.id)
        head = store.head(layout.bundle_key(login, name)) if gist.id in stored else None
        if head is not None and unchanged(head, gist):
            writer.prune_expired(store, login, name, head)  # retention, as a repository's
            done.unchanged += 1
            continue
        # The writer's files are `<work>/<login>/gists/<id>.*`: their folder first.
        (writer.gitwork.user_dir(login) / layout.gists_work_folder()).mkdir(parents=True,
                                                                      exist_ok=True)
        change = Change(gist_url(settings.github.gist_base, gist.id), None,
                        gist.pushed_at or gist.updated_at, gist.updated_at, now())
        written = writer.write(store, login, name, change, head, auth)
        done.bytes += written.bytes
        done.read_bytes += written.read_bytes
        if written.outcome is WriteOutcome.FAILED:
            done.failures.append(f"{gist.id}: {written.error}")
        elif written.outcome is WriteOutcome.UNCHANGED:
            done.unchanged += 1
        else:
            done.archived += 1
    error = (f"{len(done.failures)} of {len(gists)} gists failed: " + "; ".join(done.failures)
             if done.failures else "")
    store.put_bytes(layout.gists_key(login), orjson.dumps([g.rest for g in gists]),
                    fitted({LAST_SYNC: format_rfc3339(now()), ERROR: error}))
    return done
