"""Back up one user: list repositories, mirror the changed ones, upload archives and metadata.

`bulkbackup sync` calls this directly; the run job's workers call it under a lock, passing the
lock's fence. Every store write goes through a FencedStore built from that fence, so none can
start, nor commit, once the user is not ours (see bulkbackup.store.fenced).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import (
    ERROR,
    LAST_SYNC,
    LISTING_ETAGS,
    PUSHED_AT,
    REPORTED_REPOS,
    SYNCD_REPOS,
    UPDATED_AT,
    fitted,
)
from bulkbackup.archive.stored import repositories
from bulkbackup.archive.writer import ArchiveWriter, Change, WriteOutcome, Written
from bulkbackup.backup.lfs_objects import store_lfs_objects
from bulkbackup.backup.results import PARTIAL_ERROR, UserResult, repo_times
from bulkbackup.backup.wikis import WikiOutcome, sync_wiki
from bulkbackup.config import Settings
from bulkbackup.errors import (
    GitHubError,
    InvalidName,
    RateLimited,
    UserGone,
)
from bulkbackup.forge.git_auth import git_auth
from bulkbackup.forge.github_graphql import GraphQLLister, Outcome, OwnerResult
from bulkbackup.forge.github_rest import GitHub, Listing
from bulkbackup.forge.quota_broker import Resource
from bulkbackup.git.auth import GitAuth
from bulkbackup.git.gitops import GitWork
from bulkbackup.interrupts import signals_interrupt
from bulkbackup.logins import stored_spelling
from bulkbackup.names import check_login, check_logins, check_repo_name
from bulkbackup.run.workdir import work_dir
from bulkbackup.store import Store, open_store
from bulkbackup.store.base import Head
from bulkbackup.store.fenced import Fence, FencedStore, StopFence
from bulkbackup.timeutil import format_rfc3339, now

log = logging.getLogger(__name__)

class UserBackup:
    """Everything that happens to one user; one instance per process, reused across users."""

    def __init__(self, settings: Settings, store: Store, github: GitHub, gitwork: GitWork,
                 stop: threading.Event | None = None,
                 committed: Callable[[str, str], None] | None = None) -> None:
        """``committed(login, repo)``: told of each increment committed (a run's worker
        marks it pending verify: pending.py)."""
        self.settings = settings
        self._store = store  # only ever written through a FencedStore (see _fenced)
        self.github = github
        self.gitwork = gitwork
        self.clone_host = settings.github.clone_host
        self.writer = ArchiveWriter(settings, gitwork, committed)
        self.stop = stop or threading.Event()

    def _fenced(self, fence: Fence | None) -> FencedStore:
        """The store for one user's writes; without a lock, only interruption stops them."""
        return FencedStore(self._store, fence or StopFence(self.stop))

    def sync(self, login: str, fence: Fence | None = None,
             listed: OwnerResult | None = None) -> UserResult:
        """Back up ``login``: its repositories listed here with REST, or ``listed`` elsewhere
        (a GraphQL batch: gone is recorded as REST's 404, failed as an API failure)."""
        check_login(login)
        if listed is not None and listed.login != login:
            raise ValueError(f"listing of {listed.login!r} given for {login!r}")
        result = UserResult(login)
        try:
            self._sync(self._fenced(fence), login, result, listed)
        finally:
            self.gitwork.cleanup(login)
        return result

    def _listing(self, login: str, etags: list[str], listed: OwnerResult | None) -> Listing:
        if listed is None:
            return self.github.list_repos(login, etags)
        if listed.outcome is Outcome.GONE:
            raise UserGone(listed.error)
        if listed.outcome is Outcome.FAILED:
            raise GitHubError(listed.error)
        return Listing(repos=listed.repos)

    def _sync(self, store: FencedStore, login: str, result: UserResult,
              listed: OwnerResult | None) -> None:
        previous = store.head(layout.user_key(login))
        etags = previous.get(LISTING_ETAGS).split() if previous else []
        stamp = format_rfc3339(now())
        try:
            listing = self._listing(login, etags, listed)
        except GitHubError as exc:  # a 404 (UserGone), or the API failing after retries
            result.error = str(exc)
            result.new_object = previous is None
            self._write_user(store, login, previous, None, result, stamp)
            return
        if listing.not_modified and previous is not None:
            result.not_modified = True
            store.replace_metadata(layout.user_key(login),
                                   layout.updated_metadata(previous, {LAST_SYNC: stamp}))
            return
        result.reported = len(listing.repos)
        result.listed = True
        # One listing of what is stored, not a request per repository (none for no repos).
        stored = repositories(store, login) if listing.repos else {}
        result.bundles = dict(stored)
        for repo in listing.repos:
            store.fence.check()  # abandon early: no clone for a user that is not ours
            self._sync_repo(store, login, repo, stored, result)
        result.error = self._summary(result)
        self._write_user(store, login, previous, listing, result, stamp)

    def _sync_repo(
        self, store: FencedStore, login: str, repo: dict[str, Any], stored: dict[str, int],
        result: UserResult,
    ) -> None:
        try:
            name = check_repo_name(repo.get("name"))
        except InvalidName as exc:
            result.failed += 1
            result.failures.append(str(exc))
            log.warning("%s: %s", login, exc)
            return
        if repo.get("fork") and self.settings.run.skip_forks:
            result.skipped += 1
            return
        self._sync_git(store, login, name, repo, stored, result)
        if self.settings.run.wikis and repo.get("has_wiki") is True:
            try:
                url = self._clone_url(repo)
            except InvalidName:
                return  # the repository's failure says why
            self._wiki(store, login, name, url, result)

    def _sync_git(self, store: FencedStore, login: str, name: str, repo: dict[str, Any],
                  stored: dict[str, int], result: UserResult) -> None:
        pushed, updated = repo_times(repo)
        head = store.head(layout.bundle_key(login, name)) if name in stored else None
        if (head is not None and pushed
                and (head.get(PUSHED_AT), head.get(UPDATED_AT)) == (pushed, updated)
                and not head.get(ERROR).startswith(layout.VERIFY_FAILED)):
            self.writer.prune_expired(store, login, name, head)
            if head.size > 0:
                result.unchanged += 1
            else:
                result.empty += 1
                result.empty_names.add(name)
            return
        size_kb = repo.get("size")
        if isinstance(size_kb, int) and size_kb > self.settings.run.max_repo_kb:
            reason = (f"skipped: {size_kb} KB is above run.max_repo_kb "
                      f"({self.settings.run.max_repo_kb})")
            self._record_failure(store, login, name, head, reason, result)
            return
        self._archive(store, login, name, repo, head, result)

    def _archive(self, store: FencedStore, login: str, name: str, repo: dict[str, Any],
                 head: Head | None, result: UserResult) -> None:
        """Store one changed repository (archive/writer.py) and count what it did."""
        try:
            change = self._change(repo)
        except InvalidName as exc:
            self._record_failure(store, login, name, head, str(exc), result)
            return
        auth = git_auth(self.settings.github, self.github.token_for_git())
        written = self.writer.write(store, login, name, change, head, auth,
                                    lfs=self.settings.run.lfs)
        self._count(name, written, result)
        if written.lfs or written.lfs_error:
            self._lfs(store, login, name, change.clone_url, written, auth, result)

    def _wiki(self, store: FencedStore, login: str, name: str, clone_url: str,
              result: UserResult) -> None:
        """The repository's wiki, when it changed (backup/wikis.py): counted apart."""
        auth = git_auth(self.settings.github, self.github.token_for_git())
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

    def _change(self, repo: dict[str, Any]) -> Change:
        branch = repo.get("default_branch")
        pushed, updated = repo_times(repo)
        return Change(self._clone_url(repo), branch if isinstance(branch, str) else None,
                      pushed, updated, now())

    def _clone_url(self, repo: dict[str, Any]) -> str:
        url = repo.get("clone_url")
        if not isinstance(url, str):
            raise InvalidName("no clone_url")
        parts = urlsplit(url)
        if (parts.scheme not in ("http", "https") or parts.netloc.lower() != self.clone_host
                or parts.username or parts.password or parts.query or parts.fragment):
            raise InvalidName(f"refusing clone URL outside {self.clone_host}: {url[:200]!r}")
        return url

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
        store: FencedStore, login: str, previous: Head | None, listing: Listing | None,
        result: UserResult, stamp: str,
    ) -> None:
        key = layout.user_key(login)
        meta = {LAST_SYNC: stamp, SYNCD_REPOS: str(result.syncd),
                REPORTED_REPOS: str(result.reported), ERROR: result.error}
        if listing is not None:
            # Only a clean sync may be skipped next time on a 304: a failed repository must be
            # retried even when the listing has not changed.
            if listing.etags and not result.failed and not result.wiki_failures:
                meta[LISTING_ETAGS] = " ".join(listing.etags)
            store.put_bytes(key, orjson.dumps(listing.repos), fitted(meta))
            return
        if previous is None:
            store.put_bytes(key, b"[]", fitted(meta))
            return
        # The API failed or the user is gone: keep the last listing and counts, record why.
        meta[SYNCD_REPOS] = previous.get(SYNCD_REPOS, "0")
        meta[REPORTED_REPOS] = previous.get(REPORTED_REPOS, "0")
        store.replace_metadata(key, fitted(meta))


def sync_users(settings: Settings, logins: list[str]) -> Iterator[UserResult]:
    """Back up the named users now, without queue or locks: each one's result as it ends.

    With `github.api: graphql` all of them are listed first, in batched queries (one for up
    to `github.graphql_batch` users). The quota is this process's own (no Redis). A problem
    recorded in the store (a user gone, a failed clone) is in its result; a failure to record
    (store unreachable) raises.
    """
    check_logins(logins)
    store = open_store(settings.store)
    github = GitHub(settings.github)
    lister = (GraphQLLister(settings.github, github.broker, github.stop)
              if settings.github.api == "graphql" else None)
    try:
        # Logins ignore case: a user already archived is synced under its stored spelling.
        logins = list(dict.fromkeys(stored_spelling(store, x) for x in logins))
        with signals_interrupt(), work_dir(settings, "sync") as path:
            job = UserBackup(settings, store, github, GitWork(settings.run, path))
            listed: dict[str, OwnerResult] = {}
            if lister is not None:
                try:
                    listed = _list_all(github, lister, logins)
                except RateLimited as exc:
                    yield from (UserResult(login, not_done=str(exc)) for login in logins)
                    return
            for login in logins:
                try:
                    yield job.sync(login, listed=listed[login] if lister else None)
                except RateLimited as exc:
                    yield UserResult(login, not_done=str(exc))
    finally:
        if lister is not None:
            lister.close()
        github.close()
        store.close()


def _list_all(github: GitHub, lister: GraphQLLister, logins: list[str]
              ) -> dict[str, OwnerResult]:
    """Every login listed with GraphQL; the deadline (github.user_deadline_s) starts once a
    token is usable, as REST's per user."""
    github.broker.wait_ready(Resource.GRAPHQL, github.stop, github.settings.max_rate_wait_s)
    deadline = time.monotonic() + github.settings.user_deadline_s
    return lister.list_owners(logins, deadline)
