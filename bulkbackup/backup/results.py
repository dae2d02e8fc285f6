"""What one user's sync found and did (`UserResult`), and what a user object's Error says.
(The API's times of a repository are read in forge/listing.py: `RepoInfo`.)"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from bulkbackup.archive.layout import UserCounts, short_reason

# The user object's Error when some repositories failed (the others are archived).
PARTIAL_ERROR = "{failed} of {reported} repositories failed: "
_PARTIAL = re.compile(r"\d+ of \d+ repositories failed:(?: |$)")  # "$": a shortened reason
# In the Error of a login GitHub does not know (REST's 404, GraphQL's NOT_FOUND: UserGone).
GONE_MARK = " not found on GitHub ("


class ErrorKind(Enum):
    """What a user object's Error says, for the pages' badges."""

    PARTIAL = "partial"  # some repositories failed; the others are archived
    GONE = "gone"  # the login is not on GitHub (any more)
    FAILED = "error"  # anything else (the listing failed)


def error_kind(text: str) -> ErrorKind | None:
    """The kind of a stored Error; None for no error."""
    if not text:
        return None
    if _PARTIAL.match(text):
        return ErrorKind.PARTIAL
    return ErrorKind.GONE if GONE_MARK in text else ErrorKind.FAILED


@dataclass
class GistsDone:
    """What one user's gists did in a sync (backup/gists.py), apart from its repositories."""

    archived: int = 0
    unchanged: int = 0
    failures: list[str] = field(default_factory=list)  # "<id>: why", or a rejected id
    bytes: int = 0
    read_bytes: int = 0


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
    read_bytes: int = 0  # archives read back from the store to prove increments (proof.py)
    not_modified: bool = False
    listed: bool = False
    # Synced from its events' repositories only, without a listing (ListingOutcome.CHANGED):
    # its object was not written, so its counts stay; `error` is for the run's figures.
    refs_only: bool = False
    # Not listed, and the user's object written for the first time (SyncdRepos 0).
    new_object: bool = False
    error: str = ""
    # Not synced at all, nothing recorded (a rate limit past the user's deadline): try later.
    not_done: str = ""
    failures: list[str] = field(default_factory=list)
    # Bundle sizes in the store after this sync (name -> bytes; 0 = no archive), and which
    # of the zero-byte ones are empty repositories.
    bundles: dict[str, int] = field(default_factory=dict)
    empty_names: set[str] = field(default_factory=set)
    # More than git (backup/wikis.py, backup/lfs_objects.py), counted apart from the
    # repositories: a wiki or an LFS object that fails does not fail its repository.
    wikis_archived: int = 0
    wikis_unchanged: int = 0
    wiki_failures: list[str] = field(default_factory=list)
    lfs_objects: int = 0  # stored by this sync
    lfs_failed: int = 0  # recorded in LfsError
    # backup/releases.py: lists asked for and stored, assets stored and not stored.
    release_lists_asked: int = 0
    release_lists_stored: int = 0
    assets_stored: int = 0
    assets_failed: int = 0
    gists: GistsDone = field(default_factory=GistsDone)  # backup/gists.py

    @property
    def wikis_failed(self) -> int:
        return len(self.wiki_failures)

    @property
    def syncd(self) -> int:
        """SyncdRepos: repositories with an archive (a bundle with data) in the store."""
        return sum(1 for size in self.bundles.values() if size > 0)

    def counts(self) -> UserCounts | None:
        """None when this sync did not see the user's repositories (304, 404, API failure)
        and its object was there before (it keeps its counts)."""
        if not self.listed:
            # A first sync that listed nothing wrote an object of zeros with the Error.
            return (UserCounts(0, 0, 0, True, 0, short_reason(self.error))
                    if self.new_object and self.error else None)
        zero = [n for n, size in self.bundles.items() if size == 0]
        empty = sum(1 for n in zero if n in self.empty_names)
        return UserCounts(self.syncd, empty, len(zero) - empty, bool(self.error), self.reported,
                          short_reason(self.error) if self.error else None)

    def line(self) -> str:
        if self.not_done:
            return f"{self.login}: not synced: {self.not_done}"
        if self.not_modified:  # its wikis checked still (backup/user_backup.py)
            text = f"{self.login}: unchanged since the last sync (304)"
        else:
            text = (f"{self.login}: {self.reported} repositories, {self.archived} archived, "
                    f"{self.unchanged} unchanged, {self.empty} empty, {self.failed} failed, "
                    f"{self.bytes / 1e6:.1f} MB uploaded")
        if self.read_bytes:
            text += f", {self.read_bytes / 1e6:.1f} MB read back"
        if self.wikis_archived or self.wikis_failed:
            text += f"; wikis {self.wikis_archived} archived, {self.wikis_failed} failed"
        if self.lfs_objects or self.lfs_failed:
            text += f"; LFS objects {self.lfs_objects} stored, {self.lfs_failed} not stored"
        if self.release_lists_stored or self.assets_stored or self.assets_failed:
            text += (f"; releases {self.release_lists_stored} lists stored, assets "
                     f"{self.assets_stored} stored, {self.assets_failed} not stored")
        if self.gists.archived or self.gists.failures:
            text += (f"; gists {self.gists.archived} archived, {len(self.gists.failures)} "
                     "failed")
        return text + (f"; error: {self.error}" if self.error else "")

