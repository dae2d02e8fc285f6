"""Back up one user: with its listing (a Lister's: forge/listing.py), mirror the changed
repositories, upload archives and metadata.

`bulkbackup sync` calls this directly (backup/sync_named.py, with the same lister as `run`);
the run job's workers call it under a lock, passing the lock's fence. Every store write goes
through a FencedStore built from that fence, so none can start, nor commit, once the user is
not ours (see bulkbackup.store.fenced).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import orjson

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import (
    ERROR,
    GISTS,
    LAST_SYNC,
    LISTING_ETAGS,
    PUSHED_AT,
    REPORTED_REPOS,
    SYNCD_REPOS,
    UPDATED_AT,
    WIKIS,
    fitted,
)
from bulkbackup.archive.stored import repositories
from bulkbackup.archive.writer import ArchiveWriter, Change, WriteOutcome, Written
from bulkbackup.backup.archived_listing import archived_listing, stored_wikis
from bulkbackup.backup.gists import sync_gists
from bulkbackup.backup.lfs_objects import store_lfs_objects
from bulkbackup.backup.releases import sync_releases, wanted
from bulkbackup.backup.results import PARTIAL_ERROR, UserResult
from bulkbackup.backup.wikis import WikiOutcome, sync_wiki
from bulkbackup.config import Settings
from bulkbackup.errors import StoreError
from bulkbackup.forge.git_auth import git_auth
from bulkbackup.forge.github_rest import GitHub
from bulkbackup.forge.listing import (
    ListingOutcome,
    OwnerListing,
    RejectedRepo,
    RepoEntry,
    RepoInfo,
)
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.git.auth import GitAuth
from bulkbackup.git.gitops import GitWork
from bulkbackup.names import check_login
from bulkbackup.store import Store
from bulkbackup.store.base import Head
from bulkbackup.store.fenced import Fence, FencedStore, StopFence
from bulkbackup.timeutil import format_rfc3339, now

log = logging.getLogger(__name__)

class UserBackup:
    """Everything that happens to one user; one instance per process, reused across users."""

    def __init__(self, settings: Settings, store: Store, git_token: Callable[[], str | None],
                 gitwork: GitWork, stop: threading.Event | None = None,
                 committed: Callable[[str, str], None] | None = None,
                 broker: QuotaBroker | None = None) -> None:
        """``git_token()``: a token for cloning (the quota broker's, in rotation);
        ``committed(login, repo)``: told of each increment committed (a run's worker marks
        it pending verify: pending.py); ``broker``: the API quota the release lists are
        asked with (default: this process's own)."""
        self.settings = settings
        self._store = store  # only ever written through a FencedStore (see _fenced)
        self.git_token = git_token
        self.gitwork = gitwork
        self.writer = ArchiveWriter(settings, gitwork, committed)
        self.stop = stop or threading.Event()
        self._broker = broker
        self._api: GitHub | None = None  # REST, for release lists: made when first needed
        # The user's object as read for its listing's conditions (`conditions`), so that the
        # sync that follows reads it once: (login, head).
        self._read: tuple[str, Head | None] | None = None

    def _fenced(self, fence: Fence | None) -> FencedStore:
        """The store for one user's writes; without a lock, only interruption stops them."""
        return FencedStore(self._store, fence or StopFence(self.stop))

    def conditions(self, login: str) -> list[str]:
        """The ETags of the user's last clean listing, for a conditional listing (REST's
        lister asks just before it lists; the sync that follows uses the same read)."""
        self._read = None
        try:
            head = self._store.head(layout.user_key(login))
        except StoreError as exc:
            # The ETags only save quota: listed in full, and the sync's own read of the
            # object fails as it always did (the user is given back).
            log.warning("%s: listed without its ETags: %s", login, exc)
            return []
        self._read = (login, head)
        return head.get(LISTING_ETAGS).split() if head else []

    def archived_listing(self, login: str, repos: Sequence[str]) -> OwnerListing | None:
        """The listing of a user whose events only moved the refs of ``repos``, from its
        archive (ListingOutcome.CHANGED), or None: the forge must list it
        (backup/archived_listing.py)."""
        return archived_listing(self._store, login, repos, self.settings.github.clone_host)

    def _previous(self, store: FencedStore, login: str) -> Head | None:
        read, self._read = self._read, None
        if read is not None and read[0] == login:
            return read[1]
        return store.head(layout.user_key(login))

    def sync(self, login: str, listing: OwnerListing, fence: Fence | None = None
             ) -> UserResult:
        """Back up ``login`` with its ``listing`` (a Lister's: gone is recorded as REST's
        404, failed as an API failure)."""
        check_login(login)
        if listing.login != login:
            raise ValueError(f"listing of {listing.login!r} given for {login!r}")
        result = UserResult(login)
        try:
            self._sync(self._fenced(fence), login, result, listing)
            self._store.flush()  # writes sent in the background (run --server) landed
        except BaseException as exc:
            # Nothing left pending; a write that failed in the background was made first.
            if (failed := self._store.cancel_pending()) is not None and isinstance(exc, Exception):
                raise failed from None
            raise
        finally:
            self.gitwork.cleanup(login)
        return result

    def _sync(self, store: FencedStore, login: str, result: UserResult,
              listing: OwnerListing) -> None:
        if listing.outcome is ListingOutcome.CHANGED:
            self._sync_moved(store, login, result, listing)
            return
        previous = self._previous(store, login)
        stamp = format_rfc3339(now())
        if listing.outcome in (ListingOutcome.GONE, ListingOutcome.FAILED):
            # A 404 (or NOT_FOUND), or the API failing after retries: recorded, completes.
            result.error = listing.error
            result.new_object = previous is None
            self._write_user(store, login, previous, None, result, stamp)
            return
        if listing.outcome is ListingOutcome.NOT_MODIFIED and previous is not None:
            result.not_modified = True
            meta = {LAST_SYNC: stamp, **self._unlisted_wikis(store, login, previous, result)}
            store.replace_metadata(layout.user_key(login),
                                   layout.updated_metadata(previous, meta))
            return
        result.reported = len(listing.repos)
        result.listed = True
        # One listing of what is stored, not a request per repository (none for no repos).
        stored = repositories(store, login) if listing.repos else {}
        result.bundles = dict(stored)
        for entry in listing.repos:
            store.fence.check()  # abandon early: no clone for a user that is not ours
            self._sync_repo(store, login, entry, stored, result)
        if listing.gists is not None and self.settings.run.gists:
            result.gists = sync_gists(self.writer, store, self.settings, login, listing.gists,
                                      previous, self.git_token())
            result.bytes += result.gists.bytes
            result.read_bytes += result.gists.read_bytes
        result.error = self._summary(result)
        self._write_user(store, login, previous, listing, result, stamp)

    def _sync_moved(self, store: FencedStore, login: str, result: UserResult,
                    listing: OwnerListing) -> None:
        """Only the repositories whose refs moved (ListingOutcome.CHANGED: their entries
        from the stored listing). Their times are the stored ones, so none looks unchanged:
        each is fetched from its archived tips (an increment, or nothing new), its archive
        keeping the stored PushedAt/UpdatedAt (the next full listing brings GitHub's). The
        user's object is not written: its listing, LastSync and counts stay those of its
        last full listing; a failure is recorded on the repository's archive as always."""
        result.refs_only = True
        result.reported = len(listing.repos)
        for entry in listing.repos:
            store.fence.check()  # abandon early: no fetch for a user that is not ours
            self._sync_repo(store, login, entry, {}, result, refs_moved=True)
        result.error = self._summary(result)  # for the run's figures and history only

    def _sync_repo(
        self, store: FencedStore, login: str, repo: RepoEntry, stored: dict[str, int],
        result: UserResult, refs_moved: bool = False,
    ) -> None:
        """``refs_moved``: its events say its refs moved, whatever its times say (only the
        repository: a wiki edit is an event that needs a listing)."""
        if isinstance(repo, RejectedRepo):  # not a valid name: fails alone
            result.failed += 1
            result.failures.append(repo.error)
            log.warning("%s: %s", login, repo.error)
            return
        if repo.fork and self.settings.run.skip_forks:
            result.skipped += 1
            return
        archived = result.archived
        self._sync_git(store, login, repo, stored, result, refs_moved)
        # A sync without a listing (refs_moved) knows no latest release: the next listing does.
        if self.settings.run.releases and not repo.clone_refusal and not refs_moved:
            self._releases(store, login, repo, result.archived > archived, result)
        # The wiki's edits do not move the repository's times: checked whatever they say.
        if self._checks_wiki(repo) and not refs_moved:
            self._wiki(store, login, repo.name, repo.clone_url, result)

    def _checks_wiki(self, repo: RepoInfo) -> bool:
        run = self.settings.run
        return (run.wikis and bool(repo.has_wiki) and not repo.clone_refusal
                and not (repo.fork and run.skip_forks))

    def _unlisted_wikis(self, store: FencedStore, login: str, previous: Head,
                        result: UserResult) -> dict[str, str]:
        """A 304 says no repository changed, but a wiki's edits move none: the wikis of the
        stored listing are checked as a fresh listing's would be (a ref listing each, no API
        request). An object without the `Wikis` count (older than it) is read once, and the
        count is kept in its metadata (returned)."""
        known = previous.get(WIKIS)
        if not self.settings.run.wikis or known == "0":
            return {}
        repos = stored_wikis(self._store, login, self.settings.github.clone_host)  # a read
        if repos is None:
            return {}
        for repo in repos:
            if self._checks_wiki(repo):
                store.fence.check()  # abandon early: no git for a user that is not ours
                self._wiki(store, login, repo.name, repo.clone_url, result)
        return {} if known else {WIKIS: str(len(repos))}

    def _sync_git(self, store: FencedStore, login: str, repo: RepoInfo,
                  stored: dict[str, int], result: UserResult, refs_moved: bool) -> None:
        """The repository itself: skipped when its times are the archived ones (unless
        ``refs_moved``)."""
        name, pushed, updated = repo.name, repo.pushed_at, repo.updated_at
        head = (store.head(layout.bundle_key(login, name)) if refs_moved or name in stored
                else None)
        if (not refs_moved and head is not None and pushed
                and (head.get(PUSHED_AT), head.get(UPDATED_AT)) == (pushed, updated)
                and not head.get(ERROR).startswith(layout.VERIFY_FAILED)):
            self.writer.prune_expired(store, login, name, head)
            if head.size > 0:
                result.unchanged += 1
            else:
                result.empty += 1
                result.empty_names.add(name)
            return
        size_kb = repo.size_kb
        if size_kb is not None and size_kb > self.settings.run.max_repo_kb:
            reason = (f"skipped: {size_kb} KB is above run.max_repo_kb "
                      f"({self.settings.run.max_repo_kb})")
            self._record_failure(store, login, name, head, reason, result)
            return
        self._archive(store, login, name, repo, head, result)

    def _archive(self, store: FencedStore, login: str, name: str, repo: RepoInfo,
                 head: Head | None, result: UserResult) -> None:
        """Store one changed repository (archive/writer.py) and count what it did."""
        if repo.clone_refusal:
            self._record_failure(store, login, name, head, repo.clone_refusal, result)
            return
        change = Change(repo.clone_url, repo.default_branch, repo.pushed_at, repo.updated_at,
                        now())
        auth = git_auth(self.settings.github, self.git_token())
        written = self.writer.write(store, login, name, change, head, auth,
                                    lfs=self.settings.run.lfs)
        self._count(name, written, result)
        if written.lfs or written.lfs_error:
            self._lfs(store, login, name, change.clone_url, written, auth, result)

    def _wiki(self, store: FencedStore, login: str, name: str, clone_url: str,
              result: UserResult) -> None:
        """The repository's wiki, when it changed (backup/wikis.py): counted apart."""
        auth = git_auth(self.settings.github, self.git_token())
        done = sync_wiki(self.writer, store, login, name, clone_url, auth, self.settings.run)
        if done.written is not None:
            result.bytes += done.written.bytes
            result.read_bytes += done.written.read_bytes
        if done.outcome is WikiOutcome.ARCHIVED:
            result.wikis_archived += 1
        elif done.outcome is WikiOutcome.UNCHANGED:
            result.wikis_unchanged += 1
        elif done.outcome is WikiOutcome.FAILED:
            error = done.written.error if done.written else ""
            result.wiki_failures.append(f"{layout.wiki_name(name)}: {error}")

    def _releases(self, store: FencedStore, login: str, repo: RepoInfo, changed: bool,
                  result: UserResult) -> None:
        """The release list and its assets, when the list may have changed
        (backup/releases.py: no request otherwise)."""
        # Only a listing that names a latest release needs the stored list's metadata.
        head = store.head(layout.releases_key(login, repo.name)) if repo.latest_release \
            else None
        if not wanted(repo, changed, head):
            return
        if self._api is None:
            broker = self._broker or QuotaBroker(None, self.settings.github.tokens)
            self._api = GitHub(self.settings.github, self.stop, 1, broker)
        auth = git_auth(self.settings.github, self.git_token())
        done = sync_releases(store, self._api, self.settings, login, repo, auth,
                             self.gitwork.user_dir(login) / "assets")
        result.release_lists_asked += 1
        result.release_lists_stored += done.stored_list
        result.assets_stored += done.assets
        result.assets_failed += len(done.failures)
        result.bytes += done.bytes

    def _lfs(self, store: FencedStore, login: str, name: str, clone_url: str,
             written: Written, auth: GitAuth, result: UserResult) -> None:
        """The LFS objects the newly archived commits point to (backup/lfs_objects.py)."""
        done = store_lfs_objects(store, self.settings.run, login, name, clone_url,
                                 written.lfs, auth, self.gitwork.user_dir(login) / "lfs",
                                 written.lfs_error)
        result.bytes += done.bytes
        result.lfs_objects += done.stored
        result.lfs_failed += len(done.failures)

    def _record_failure(self, store: FencedStore, login: str, name: str, head: Head | None,
                        error: str, result: UserResult) -> None:
        self._count(name, self.writer.record_failure(store, login, name, head, error), result)

    @staticmethod
    def _count(name: str, written: Written, result: UserResult) -> None:
        result.bytes += written.bytes
        result.read_bytes += written.read_bytes
        if written.bundle_size is not None:
            result.bundles[name] = written.bundle_size
        if written.outcome is WriteOutcome.ARCHIVED:
            result.archived += 1
        elif written.outcome is WriteOutcome.UNCHANGED:
            result.unchanged += 1
        elif written.outcome is WriteOutcome.EMPTY:
            result.empty += 1
            result.empty_names.add(name)
        else:
            result.failed += 1
            result.failures.append(f"{name}: {written.error}")

    @staticmethod
    def _summary(result: UserResult) -> str:
        if not result.failed:
            return ""
        return PARTIAL_ERROR.format(failed=result.failed, reported=result.reported) + (
            "; ".join(result.failures))

    def record_error(self, login: str, error: str, fence: Fence | None = None) -> None:
        """Record ``error`` on the user's object, keeping its listing and counts."""
        store = self._fenced(fence)
        result = UserResult(login, error=error)
        self._write_user(store, login, store.head(layout.user_key(login)), None, result,
                         format_rfc3339(now()))

    @staticmethod
    def _write_user(
        store: FencedStore, login: str, previous: Head | None, listing: OwnerListing | None,
        result: UserResult, stamp: str,
    ) -> None:
        key = layout.user_key(login)
        meta = {LAST_SYNC: stamp, SYNCD_REPOS: str(result.syncd),
                REPORTED_REPOS: str(result.reported), ERROR: result.error}
        if listing is not None:
            # Only a clean sync may be skipped next time on a 304: a failed repository (or
            # wiki) must be retried even when the listing has not changed.
            if (listing.etags and not result.failed and not result.wiki_failures
                    and not result.gists.failures):
                meta[LISTING_ETAGS] = " ".join(listing.etags)
            gists = (len(listing.gists) if listing.gists is not None
                     else previous.get(GISTS) if previous else "")
            meta[GISTS] = str(gists or 0)
            meta[WIKIS] = str(sum(1 for r in listing.repos
                                  if isinstance(r, RepoInfo) and r.has_wiki))
            store.put_bytes(key, orjson.dumps(listing.stored), fitted(meta))
            return
        if previous is None:
            store.put_bytes(key, b"[]", fitted(meta))
            return
        # The API failed or the user is gone: keep the last listing and counts, record why.
        meta[SYNCD_REPOS] = previous.get(SYNCD_REPOS, "0")
        meta[REPORTED_REPOS] = previous.get(REPORTED_REPOS, "0")
        store.replace_metadata(key, fitted(meta))
