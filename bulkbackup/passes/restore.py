"""Rebuild repositories as bare mirrors from the store alone (no GitHub).

Which objects make up an archive is `archives.archive_at`'s answer; `build_mirror` fetches
each of its bundles in turn. Downloads are streamed to disk; a repository is built in a
temporary directory beside its target and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from bulkbackup.archive import layout
from bulkbackup.archive.apply import apply_part, check_refs, readable
from bulkbackup.archive.stored import (
    RepoArchive,
    archive_at,
    archived,
    download,
    gists,
    listed_branches,
    wikis,
)
from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError, InvalidName, StoreError
from bulkbackup.git.bundles import BundleHeader
from bulkbackup.git.localgit import Git
from bulkbackup.names import (
    check_archive_name,
    check_login,
    check_repo_name,
    is_gist_name,
    is_wiki_name,
)
from bulkbackup.passes.restore_lfs import restore_lfs_objects
from bulkbackup.passes.restore_releases import restore_releases
from bulkbackup.store import Store

# Written into a restored repository's config: what it is a restore of (see --force).
MARKER = "bulkbackup.restoredFrom"


# ---------------------------------------------------------------------------------------------
# Bundles and git


def choose_branch(refs: dict[str, str], head: str | None, listed: str | None) -> str | None:
    """The default branch: the user object's when the bundle has it, else a branch at the
    bundle's HEAD, else the first branch (as `sync` chose the branch to zip)."""
    heads = sorted(r.removeprefix("refs/heads/") for r in refs if r.startswith("refs/heads/"))
    if listed and listed in heads:
        return listed
    at_head = [b for b in heads if head and refs[f"refs/heads/{b}"] == head]
    choices = at_head or heads
    return choices[0] if choices else None


@dataclass(frozen=True)
class Built:
    refs: dict[str, str]
    branch: str | None


def build_mirror(store: Store, git: Git, archive: RepoArchive, dest: Path, work: Path,
                 listed: str | None, progress: bool = True) -> Built:
    """A bare repository at ``dest`` with exactly the refs of ``archive``; raises ArchiveError
    naming what is wrong (truncated bundle, refs differing from the bundle's header...)."""
    dest, work = dest.absolute(), work.absolute()  # git runs in other directories
    git("init", "--quiet", "--bare", str(dest), cwd=work)
    header = BundleHeader((), {}, None)
    for part in archive.parts:
        path = readable(store, part, work / "part.bundle", progress)
        header = apply_part(git, dest, path, part.key)
        (work / "part.bundle").unlink(missing_ok=True)
    refs = check_refs(git, dest, header, archive.repo)
    branch = choose_branch(refs, header.head, listed)
    if branch:
        git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=dest)
    elif listed:  # no branch at all: HEAD as GitHub has it, if git accepts the API's name
        with contextlib.suppress(ArchiveError):
            git("symbolic-ref", "HEAD", f"refs/heads/{listed}", cwd=dest)
    git("config", MARKER, f"{archive.login}/{archive.repo}", cwd=dest)
    return Built(refs, branch)


# ---------------------------------------------------------------------------------------------
# Restore


class Status(enum.Enum):
    RESTORED = "restored"
    EMPTY = "empty"  # an empty repository: restored as an empty bare repository
    # A zero-byte bundle whose `Error` says why there is none (deleted upstream, failed to
    # clone): a recorded result, reported; a failure only when it is the one repository asked.
    NO_ARCHIVE = "no archive"
    FAILED = "failed"


@dataclass(frozen=True)
class RepoRestore:
    login: str
    repo: str
    status: Status
    reason: str = ""
    path: Path | None = None
    refs: int = 0
    branch: str | None = None
    zip_path: Path | None = None
    lfs_objects: int = 0  # Git LFS objects put into the mirror (restore_lfs.py)
    assets: int = 0  # release assets written beside it (restore_releases.py)


@dataclass
class RestoreReport:
    repos: list[RepoRestore] = field(default_factory=list)

    @property
    def failed(self) -> list[RepoRestore]:
        return [r for r in self.repos if r.status is Status.FAILED]

    @property
    def without_archive(self) -> list[RepoRestore]:
        return [r for r in self.repos if r.status is Status.NO_ARCHIVE]


@dataclass(frozen=True)
class RestoreOptions:
    to: Path
    at: datetime | None = None
    with_zip: bool = False
    force: bool = False
    progress: bool = True


def parse_target(text: str) -> tuple[str, str | None]:
    """`LOGIN` or `LOGIN/REPO`, both validated before they become keys or paths."""
    login, sep, repo = text.partition("/")
    return check_login(login), check_repo_name(repo) if sep else None


def restore(store: Store, settings: Settings, login: str, repo: str | None,
            opts: RestoreOptions) -> RestoreReport:
    """Restore one repository (and its wiki, `<repo>.wiki.git`, when one is stored), or
    every repository, wiki and gist (`gists/<id>.git`) stored for ``login``. Of a user's
    repositories, one without an archive whose `Error` says why is reported, not failed
    (the user's backup is whole: `sync` recorded why); the one repository asked for by name
    that has no archive is a failure (nothing of what was asked could be restored)."""
    if repo is not None:
        wiki = layout.wiki_name(repo)
        names = [repo, *([wiki] if wiki in wikis(store, login) else [])]
    else:
        names = [*archived(store, login), *map(layout.gist_name, gists(store, login))]
    report = RestoreReport()
    if not names:
        report.repos.append(RepoRestore(login, "*", Status.FAILED,
                                        f"no archives stored for user {login}"))
        return report
    branches = listed_branches(store, login)
    for name in names:
        result = restore_repo(store, settings, login, name, opts, branches.get(name))
        if name == repo and result.status is Status.NO_ARCHIVE:
            result = replace(result, status=Status.FAILED, reason=f"no archive: {result.reason}")
        report.repos.append(result)
    return report


def restore_repo(store: Store, settings: Settings, login: str, repo: str,
                 opts: RestoreOptions, listed: str | None) -> RepoRestore:
    try:
        check_archive_name(repo)
        return _restore_repo(store, settings, login, repo, opts, listed)
    except (ArchiveError, InvalidName, StoreError) as exc:
        return RepoRestore(login, repo, Status.FAILED, str(exc))
    except OSError as exc:
        return RepoRestore(login, repo, Status.FAILED, f"{type(exc).__name__}: {exc}")


def _restore_repo(store: Store, settings: Settings, login: str, repo: str,
                  opts: RestoreOptions, listed: str | None) -> RepoRestore:
    # A gist's name is `gists/<id>`: restored as `<login>/gists/<id>.git`.
    folder, _, leaf = repo.rpartition("/")
    parent = opts.to.absolute() / login
    _check_parent(parent)
    if folder:
        parent = parent / folder
        _check_parent(parent)
    target = parent / f"{leaf}.git"
    zip_target = parent / f"{leaf}.zip"
    _check_target(target, login, repo, opts.force)
    archive = archive_at(store, login, repo, opts.at)
    if not archive.parts and not archive.empty_repository:
        if archive.error:
            return RepoRestore(login, repo, Status.NO_ARCHIVE, archive.error)
        raise ArchiveError(f"{archive.bundle_key} is zero bytes without an Error")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{leaf}.git.restoring-", dir=parent,
                                     ignore_cleanup_errors=True) as name:
        work = Path(name)
        git = Git(settings, work)
        built = build_mirror(store, git, archive, work / "repo.git", work, listed, opts.progress)
        got_zip = False
        if opts.with_zip and archive.has_zip:
            head = store.head(archive.zip_key)
            if head is None:
                raise ArchiveError(f"missing object {archive.zip_key}")
            download(store, archive.zip_key, work / "repo.zip", head.size, opts.progress)
            got_zip = True
        elif opts.with_zip and built.branch is not None and archive.latest:
            raise ArchiveError(f"missing object {archive.zip_key}")
        more_than_git = is_wiki_name(repo) or is_gist_name(repo)  # no LFS, no releases
        lfs = 0 if more_than_git else restore_lfs_objects(
            store, login, repo, work / "repo.git", opts.progress)
        _swap(work / "repo.git", target, work / "old.git")
        if got_zip:
            os.replace(work / "repo.zip", zip_target)
    assets = 0 if more_than_git else restore_releases(store, login, repo, parent,
                                                           opts.progress)
    return RepoRestore(login, repo, Status.EMPTY if archive.empty_repository else
                       Status.RESTORED, path=target, refs=len(built.refs), branch=built.branch,
                       zip_path=zip_target if got_zip else None, lfs_objects=lfs,
                       assets=assets)


def _swap(new: Path, target: Path, old: Path) -> None:
    """Move ``new`` to ``target``; an earlier restore there (checked) goes to ``old``, and
    comes back if the move fails."""
    replacing = target.exists()
    if replacing:
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if replacing:
            os.rename(old, target)
        raise


def _check_parent(parent: Path) -> None:
    """``DIR/<login>`` is a real folder (or not there yet): a symbolic link there could send
    the restore anywhere, so it is not followed."""
    if parent.is_symlink():
        raise ArchiveError(f"{parent} is a symbolic link: not followed")
    if parent.exists() and not parent.is_dir():
        raise ArchiveError(f"{parent} exists and is not a directory")


def _check_target(target: Path, login: str, repo: str, force: bool) -> None:
    """An existing target is replaced only with --force, and only when it is an earlier
    restore of this same repository (its config says so): nothing else is ever overwritten."""
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise ArchiveError(f"{target} exists (--force replaces an earlier restore of {login}/"
                           f"{repo})")
    config = target / "config"
    try:
        text = config.read_text(errors="replace") if config.is_file() else ""
    except OSError:
        text = ""
    if target.is_symlink() or not _restore_of(text, f"{login}/{repo}"):
        raise ArchiveError(f"{target} exists and is not a restore of {login}/{repo}: "
                           "not replaced, even with --force")


def _restore_of(config_text: str, source: str) -> bool:
    in_section = False
    for raw in config_text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            in_section = line.lower() == "[bulkbackup]"
        elif in_section:
            name, _, value = line.partition("=")
            if name.strip().lower() == "restoredfrom" and value.strip() == source:
                return True
    return False
