"""Back up one user: list repositories, mirror the changed ones, upload archives and metadata.

`bulkbackup sync` calls this directly; the run job's workers call it under a lock, passing a
``check`` that raises LockLost (or Interrupted) so no write happens once the user is not ours.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bulkbackup.config import Settings
from bulkbackup.errors import GitError, GitHubError, InvalidName, UsageError
from bulkbackup.github import GitHub, Listing
from bulkbackup.gitops import GitWork
from bulkbackup.names import check_login, check_repo_name
from bulkbackup.store import Store, open_store
from bulkbackup.store.base import (
    ERROR,
    LAST_SYNC,
    LISTING_ETAGS,
    PUSHED_AT,
    REPORTED_REPOS,
    SYNCD_REPOS,
    UPDATED_AT,
    Head,
    canonical,
)
from bulkbackup.timeutil import format_rfc3339, now, parse_api_time

log = logging.getLogger(__name__)

EMPTY_REPOSITORY = "empty repository"


@dataclass(frozen=True)
class UserCounts:
    """What the stats pass needs per user, cached in Redis by whoever last wrote the user:
    bundles with data (= SyncdRepos), zero-byte bundles of empty repositories, other
    zero-byte bundles (failed), and whether the user's object has an Error."""

    syncd: int
    empty: int
    failed: int
    error: bool

    def encode(self) -> str:
        return f"{self.syncd} {self.empty} {self.failed} {int(self.error)}"

    @classmethod
    def decode(cls, text: str | None) -> UserCounts | None:
        try:
            s, e, f, u = (int(x) for x in (text or "").split())
        except ValueError:
            return None
        return cls(s, e, f, bool(u))


@dataclass
class UserResult:
    login: str
    reported: int = 0
    archived: int = 0
    unchanged: int = 0
    empty: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    not_modified: bool = False
    listed: bool = False
    error: str = ""
    failures: list[str] = field(default_factory=list)
    # Bundle sizes in the store after this sync (name -> bytes; 0 = no archive), and which
    # of the zero-byte ones are empty repositories.
    bundles: dict[str, int] = field(default_factory=dict)
    empty_names: set[str] = field(default_factory=set)

    @property
    def syncd(self) -> int:
        """SyncdRepos: repositories with an archive (a bundle with data) in the store."""
        return sum(1 for size in self.bundles.values() if size > 0)

    def counts(self) -> UserCounts | None:
        """None when this sync did not see the user's repositories (304, 404, API failure)."""
        if not self.listed:
            return None
        zero = [n for n, size in self.bundles.items() if size == 0]
        empty = sum(1 for n in zero if n in self.empty_names)
        return UserCounts(self.syncd, empty, len(zero) - empty, bool(self.error))

    def line(self) -> str:
        if self.not_modified:
            return f"{self.login}: unchanged since the last sync (304)"
        text = (f"{self.login}: {self.reported} repositories, {self.archived} archived, "
                f"{self.unchanged} unchanged, {self.empty} empty, {self.failed} failed, "
                f"{self.bytes / 1e6:.1f} MB uploaded")
        return text + (f"; error: {self.error}" if self.error else "")


# GitHub's timestamps, e.g. 2026-01-01T00:00:00Z. Anything else from the API is not stored
# (it would go into metadata, and could exceed the store's limit on every attempt).
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def _timestamp(value: object) -> str:
    """The API's time as given, or "" unless it is a real date in a sane range (a
    far-future `9999-12-31T23:59:59Z` would otherwise look newer than every later push)."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return ""
    return value if parse_api_time(value) is not None else ""


def _repo_times(repo: dict[str, Any]) -> tuple[str, str]:
    """(pushed_at, updated_at); "" for a value that is not a real time: such a repository
    cannot be seen to be unchanged, so it is archived again each pass."""
    return _timestamp(repo.get("pushed_at")), _timestamp(repo.get("updated_at"))


class UserBackup:
    """Everything that happens to one user; one instance per process, reused across users."""

    def __init__(self, settings: Settings, store: Store, github: GitHub, gitwork: GitWork) -> None:
        self.settings = settings
        self.store = store
        self.github = github
        self.gitwork = gitwork
        self.clone_host = settings.github.clone_host

    def sync(self, login: str, check: Callable[[], None] = lambda: None) -> UserResult:
        check_login(login)
        result = UserResult(login)
        try:
            self._sync(login, result, check)
        finally:
            self.gitwork.cleanup(login)
        return result

    def _sync(self, login: str, result: UserResult, check: Callable[[], None]) -> None:
        previous = self.store.head(login)
        etags = previous.get(LISTING_ETAGS).split() if previous else []
        stamp = format_rfc3339(now())
        try:
            listing = self.github.list_repos(login, etags)
        except GitHubError as exc:  # a 404 (UserGone), or the API failing after retries
            result.error = str(exc)
            check()
            self._write_user(login, previous, None, result, stamp)
            return
        if listing.not_modified and previous is not None:
            result.not_modified = True
            check()
            meta = dict(previous.metadata)
            meta[LAST_SYNC.lower()] = stamp
            self.store.replace_metadata(login, canonical(meta))
            return
        result.reported = len(listing.repos)
        result.listed = True
        # One listing of what is stored, not a request per repository (none for no repos).
        stored = self._stored_bundles(login) if listing.repos else {}
        result.bundles = dict(stored)
        for repo in listing.repos:
            check()
            self._sync_repo(login, repo, stored, result, check)
        result.error = self._summary(result)
        check()
        self._write_user(login, previous, listing, result, stamp)

    def _stored_bundles(self, login: str) -> dict[str, int]:
        """Sizes of the bundles stored for ``login``: one listing, not a request per repo."""
        return {
            info.key[len(login) + 1 : -len(".bundle")]: info.size
            for info in self.store.list(f"{login}/")
            if info.key.endswith(".bundle")
        }

    def _sync_repo(
        self, login: str, repo: dict[str, Any], stored: dict[str, int], result: UserResult,
        check: Callable[[], None],
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
        key = f"{login}/{name}.bundle"
        pushed, updated = _repo_times(repo)
        head = self.store.head(key) if name in stored else None
        has_archive = head is not None and head.size > 0
        if (head is not None and pushed
                and (head.get(PUSHED_AT), head.get(UPDATED_AT)) == (pushed, updated)):
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
            self._record_failure(login, name, head, reason, result, check)
            return
        branch = repo.get("default_branch")
        try:
            archive = self.gitwork.archive(
                login, name, self._clone_url(repo), branch if isinstance(branch, str) else None,
                self.github.tokens.any_token(), check)
        except (GitError, InvalidName) as exc:
            self._record_failure(login, name, head, str(exc), result, check)
            return
        check()
        fresh = self.store.head(key)
        if fresh is not None and fresh.size > 0 and _newer(fresh, pushed, updated):
            # Another worker stored a newer archive meanwhile: never go back in time.
            result.unchanged += 1
            return
        stamp = format_rfc3339(now())
        if archive.bundle is None:
            if has_archive:
                self._record_failure(login, name, head, EMPTY_REPOSITORY, result, check)
                return
            self.store.put_bytes(key, b"", {LAST_SYNC: stamp, PUSHED_AT: pushed,
                                            UPDATED_AT: updated, ERROR: EMPTY_REPOSITORY})
            result.empty += 1
            result.empty_names.add(name)
            result.bundles[name] = 0
            return
        if archive.zip is not None:
            check()
            self.store.put_file(f"{login}/{name}.zip", archive.zip, {LAST_SYNC: stamp})
            result.bytes += archive.zip.stat().st_size
        check()
        # The bundle goes last: its PushedAt/UpdatedAt say the archives are complete.
        self.store.put_file(key, archive.bundle, {LAST_SYNC: stamp, PUSHED_AT: pushed,
                                                  UPDATED_AT: updated})
        size = archive.bundle.stat().st_size
        result.bytes += size
        result.bundles[name] = size
        result.archived += 1

    def _record_failure(
        self, login: str, name: str, head: Head | None, error: str, result: UserResult,
        check: Callable[[], None],
    ) -> None:
        result.failed += 1
        result.failures.append(f"{name}: {error}")
        log.info("%s/%s: %s", login, name, error)
        key = f"{login}/{name}.bundle"
        check()
        if head is not None and head.size > 0:
            # A good archive is never replaced by a failure: only its Error changes.
            meta = dict(head.metadata)
            meta[ERROR.lower()] = error
            self.store.replace_metadata(key, canonical(meta))
        else:
            self.store.put_bytes(key, b"", {LAST_SYNC: format_rfc3339(now()), ERROR: error})
            result.bundles[name] = 0

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
        return f"{result.failed} of {result.reported} repositories failed: " + "; ".join(
            result.failures)

    def record_error(self, login: str, error: str, check: Callable[[], None]) -> None:
        """Record ``error`` on the user's object, keeping its listing and counts."""
        result = UserResult(login, error=error)
        check()
        self._write_user(login, self.store.head(login), None, result, format_rfc3339(now()))

    def _write_user(
        self, login: str, previous: Head | None, listing: Listing | None, result: UserResult,
        stamp: str,
    ) -> None:
        meta = {LAST_SYNC: stamp, SYNCD_REPOS: str(result.syncd),
                REPORTED_REPOS: str(result.reported), ERROR: result.error}
        if listing is not None:
            # Only a clean sync may be skipped next time on a 304: a failed repository must be
            # retried even when the listing has not changed.
            if listing.etags and not result.failed:
                meta[LISTING_ETAGS] = " ".join(listing.etags)
            self.store.put_bytes(login, orjson.dumps(listing.repos), meta)
            return
        if previous is None:
            self.store.put_bytes(login, b"[]", meta)
            return
        # The API failed or the user is gone: keep the last listing and counts, record why.
        meta[SYNCD_REPOS] = previous.get(SYNCD_REPOS, "0")
        meta[REPORTED_REPOS] = previous.get(REPORTED_REPOS, "0")
        self.store.replace_metadata(login, meta)


def _newer(head: Head, pushed: str, updated: str) -> bool:
    """Is the stored archive newer than what the API just described?

    Times are compared as dates, never as text. Only a real stored time can be newer: a
    stored value that is malformed or in the future (written by an older version, or by
    hand) must not block a repository forever; nor can anything be newer than unknown
    times (then the fresh archive is stored, as on every pass for such a repository)."""
    stored = parse_api_time(head.get(PUSHED_AT)), parse_api_time(head.get(UPDATED_AT))
    listed = parse_api_time(pushed), parse_api_time(updated)
    if stored[0] is None or listed[0] is None:
        return False
    if stored[0] != listed[0]:
        return stored[0] > listed[0]
    return stored[1] is not None and listed[1] is not None and stored[1] > listed[1]


@contextmanager
def work_dir(settings: Settings, name: str) -> Iterator[Path]:
    """A private work directory for one process, removed afterwards."""
    base = Path(settings.run.work_dir) if settings.run.work_dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"bulkbackup-{name}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sync_command(settings: Settings, logins: list[str]) -> int:
    """`bulkbackup sync LOGIN...`: back up the named users now, without queue or locks."""
    for login in logins:
        try:
            check_login(login)
        except InvalidName as exc:
            raise UsageError(str(exc)) from None
    store = open_store(settings.store)
    github = GitHub(settings.github)
    failed = 0
    try:
        with work_dir(settings, "sync") as path:
            job = UserBackup(settings, store, github, GitWork(settings.run, settings.github, path))
            for login in logins:
                result = job.sync(login)
                print(result.line(), file=sys.stdout, flush=True)
                failed += bool(result.error)
    finally:
        github.close()
        store.close()
    print(f"sync: {len(logins)} users, {failed} with errors", file=sys.stderr)
    return 1 if failed else 0
