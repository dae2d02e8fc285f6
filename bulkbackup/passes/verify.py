"""Verify archives: download each one, prove it restores, and record the result on it.

A good archive gets `VerifiedAt`; a bad one gets an `Error` starting with `verify failed:`.
Verify only ever changes metadata (replace_metadata, keeping the rest): it never deletes or
replaces an archive's data.
"""

from __future__ import annotations

import enum
import random
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR, LAST_SYNC, LISTING_ETAGS, VERIFIED_AT, VERIFY_NOTES
from bulkbackup.archive.stored import (
    RepoArchive,
    archived,
    download,
    gists,
    latest_archive,
    listed_branches,
)
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError, InvalidName, StoreError, printable
from bulkbackup.git.fsck import fsck
from bulkbackup.git.localgit import Git
from bulkbackup.names import check_archive_name, is_login
from bulkbackup.passes.restore import Built, build_mirror
from bulkbackup.queue import keys
from bulkbackup.store import Store
from bulkbackup.timeutil import format_rfc3339, now

VERIFY_FAILED = layout.VERIFY_FAILED


class Outcome(enum.Enum):
    VERIFIED = "verified"
    FAILED = "failed"
    NO_ARCHIVE = "no_archive"  # a zero-byte bundle with its Error: nothing to verify


@dataclass(frozen=True)
class RepoVerify:
    name: str
    outcome: Outcome
    reason: str = ""
    notes: str = ""  # verified, with `git fsck` messages git tolerates (VerifyNotes)
    recorded: bool = False  # the result was written on the archive (pending.py forgets it)


@dataclass
class UserVerify:
    login: str
    repos: list[RepoVerify] = field(default_factory=list)
    error: str = ""  # the user itself could not be verified (not in the store)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.repos if r.outcome is outcome)

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.count(Outcome.FAILED) > 0


@dataclass
class VerifyReport:
    users: list[UserVerify] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        return any(u.failed for u in self.users)

    def totals(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "users_failed": sum(1 for u in self.users if u.failed),
            "archives": sum(len(u.repos) for u in self.users),
            **{o.value: sum(u.count(o) for u in self.users) for o in Outcome},
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "users": [{"login": u.login, "error": u.error or None,
                       **{o.value: u.count(o) for o in Outcome},
                       "repositories": [{"name": r.name, "result": r.outcome.value,
                                         "reason": r.reason or None,
                                         "notes": r.notes or None} for r in u.repos]}
                      for u in self.users],
            "totals": self.totals(),
        }


def sample_logins(store: Store, n: int, rng: random.Random | None = None,
                  skip: Iterable[str] = ()) -> list[str]:
    """``n`` users drawn uniformly from the top-level listing (reservoir sampling: one pass,
    memory for ``n`` logins, whatever the size of the store), none of ``skip``."""
    rng = rng or random.SystemRandom()
    skipped = set(skip)
    chosen: list[str] = []
    seen = 0
    for info in store.list_top():
        if not is_login(info.key) or info.key in skipped:
            continue
        seen += 1
        if len(chosen) < n:
            chosen.append(info.key)
        else:
            slot = rng.randrange(seen)
            if slot < n:
                chosen[slot] = info.key
    return sorted(chosen)


def verify(store: Store, settings: Settings, logins: Iterable[str], work_root: Path,
           progress: bool = True) -> VerifyReport:
    started = time.monotonic()
    report = VerifyReport()
    for login in logins:
        report.users.append(verify_user(store, settings, login, work_root, progress))
    report.elapsed_s = time.monotonic() - started
    return report


def verify_user(store: Store, settings: Settings, login: str, work_root: Path,
                progress: bool = True) -> UserVerify:
    user = UserVerify(login)
    try:
        # Wikis and gists too: each is a bundle as any other.
        names = [*archived(store, login), *map(layout.gist_name, gists(store, login))]
        if not names and store.head(login) is None:
            user.error = f"user {login} is not in the store"
            return user
        branches = listed_branches(store, login)
    except StoreError as exc:
        user.error = str(exc)
        return user
    for name in names:
        user.repos.append(verify_repo(store, settings, login, name, branches.get(name),
                                      work_root, progress))
    return user


def verify_repo(store: Store, settings: Settings, login: str, name: str, listed: str | None,
                work_root: Path, progress: bool = True) -> RepoVerify:
    """Check one archive and record the result on its bundle."""
    try:
        check_archive_name(name)
        archive = latest_archive(store, login, name)
    except (ArchiveError, InvalidName, StoreError) as exc:
        return RepoVerify(name, Outcome.FAILED, str(exc))  # nothing to record it on
    if not archive.parts and archive.error and not archive.error.startswith(VERIFY_FAILED):
        return RepoVerify(name, Outcome.NO_ARCHIVE, archive.error)
    with tempfile.TemporaryDirectory(prefix="verify-", dir=work_root,
                                     ignore_cleanup_errors=True) as scratch:
        try:
            notes = check_archive(store, Git(settings, Path(scratch)), archive, listed,
                                  Path(scratch), progress)
            result = RepoVerify(name, Outcome.VERIFIED, notes=notes)
        except ArchiveError as exc:
            result = RepoVerify(name, Outcome.FAILED, str(exc))
        except StoreError as exc:  # reading the store failed, not the archive: not recorded
            return RepoVerify(name, Outcome.FAILED, str(exc))
        except OSError as exc:  # the scratch disk, not the archive: not recorded
            return RepoVerify(name, Outcome.FAILED, f"{type(exc).__name__}: {exc}")
    try:
        recorded = record(store, archive, result)
    except StoreError as exc:
        return RepoVerify(name, result.outcome, (result.reason + "; " if result.reason else "")
                          + f"not recorded: {exc}")
    return replace(result, recorded=recorded)


def check_archive(store: Store, git: Git, archive: RepoArchive, listed: str | None,
                  work: Path, progress: bool = True) -> str:
    """Raise ArchiveError naming the first thing wrong with ``archive``; else return what
    `git fsck` noted without failing (format oddities git reads, see bulkbackup.git.fsck)."""
    if not archive.parts:
        raise ArchiveError(archive.error.removeprefix(VERIFY_FAILED) if archive.error else
                           f"{archive.bundle_key} is zero bytes without an Error")
    repo = work / "repo.git"
    built = build_mirror(store, git, archive, repo, work, listed, progress)
    notes = fsck(git, repo).text()
    has_branches = any(r.startswith("refs/heads/") for r in built.refs)
    if listed and has_branches and f"refs/heads/{listed}" not in built.refs:
        raise ArchiveError(f"{archive.bundle_key}: the default branch {listed} (user object) "
                           "is not in the bundle")
    check_zip(store, archive, built, work, progress)
    return notes


def check_zip(store: Store, archive: RepoArchive, built: Built, work: Path,
              progress: bool = True) -> None:
    """The zip opens, every entry reads back, its top folder is `<repo>-<branch>/` and it was
    made from the bundle's default branch (git archive writes the commit id as its comment)."""
    key = archive.zip_key
    if not archive.has_zip:
        if built.branch is not None:
            raise ArchiveError(f"missing object {key}")
        return
    head = store.head(key)
    if head is None:
        raise ArchiveError(f"missing object {key}")
    path = work / "repo.zip"
    download(store, key, path, head.size, progress)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = z.namelist()
            comment = z.comment.decode("ascii", "replace")
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise ArchiveError(f"{key}: not a zip file ({str(exc)[:100]})") from None
    if bad is not None:
        raise ArchiveError(f"{key}: corrupt zip entry {bad[:100]!r}")
    if built.branch is None:
        raise ArchiveError(f"{key}: a zip is stored but the bundle has no branch")
    prefix = f"{archive.repo}-{built.branch.replace('/', '-')}/"
    if not names or not all(n.startswith(prefix) for n in names):
        raise ArchiveError(f"{key}: top folder is not {prefix}")
    tip = built.refs[f"refs/heads/{built.branch}"]
    if comment != tip:
        raise ArchiveError(f"{key}: made from commit {comment[:12] or '(none)'}, but the "
                           f"bundle's {built.branch} is at {tip[:12]}")


def record(store: Store, archive: RepoArchive, result: RepoVerify) -> bool:
    """Write the result on the bundle's metadata, keeping the rest. Nothing is written when
    the bundle changed while it was checked (a sync stored a new archive): False."""
    fresh = store.head(archive.bundle_key)
    if fresh is None or (fresh.size, fresh.get(LAST_SYNC)) != (
            archive.bundle.size, archive.bundle.get(LAST_SYNC)):
        return False
    error = fresh.get(ERROR)
    changes: dict[str, str] = {}
    if result.outcome is Outcome.VERIFIED:
        changes[VERIFIED_AT] = format_rfc3339(now())
        if result.notes or fresh.get(VERIFY_NOTES):
            changes[VERIFY_NOTES] = result.notes  # this pass's notes replace the last one's
        if error.startswith(VERIFY_FAILED):
            changes[ERROR] = ""  # a failure seen earlier (e.g. a store read) is gone
    else:
        changes[ERROR] = VERIFY_FAILED + printable(result.reason)
        if changes[ERROR] == error:
            return True
    store.replace_metadata(archive.bundle_key, layout.updated_metadata(fresh, changes))
    if result.outcome is not Outcome.VERIFIED:
        _forget_listing_etags(store, archive.login)
    return True


def _forget_listing_etags(store: Store, login: str) -> None:
    """The next sync must list the user in full (no 304), or it would skip the repository
    whose archive just failed and never archive it again."""
    key = layout.user_key(login)
    head = store.head(key)
    if head is not None and head.get(LISTING_ETAGS):
        store.replace_metadata(key, layout.updated_metadata(head, {LISTING_ETAGS: ""}))


def save_figures(r: redis.Redis, report: VerifyReport) -> None:
    """The last verify pass's figures (`bulkbackup:lastverify`), for `stats`; totals of all
    passes are kept beside them."""
    totals = report.totals()
    names = ("users", "archives", "verified", "failed", "no_archive", "elapsed_s")
    figures: dict[str, int | float] = {name: totals[name] for name in names}
    pipe = r.pipeline(transaction=True)
    figures["at"] = int(time.time())
    pipe.hset(keys.LAST_VERIFY, mapping=figures)  # type: ignore[arg-type]
    pipe.hincrby(keys.LAST_VERIFY, "verified_total", totals["verified"])
    pipe.hincrby(keys.LAST_VERIFY, "failed_total", totals["failed"])
    pipe.execute()
