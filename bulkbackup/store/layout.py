"""The store layout: the only place that spells or parses a store key.

    <login>                   the user's repository list (JSON array), with the user's metadata
    <login>/<repo>.bundle     `git bundle create --all` of a mirror clone (zero bytes: no archive)
    <login>/<repo>.zip        the default branch as GitHub's zip archive

Also the per-user counts cached in Redis for the stats pass (`UserCounts`), the `Error` of an
empty repository, and the metadata update that hides the lower-casing of names on read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from bulkbackup.store.base import Head, canonical

SEPARATOR = "/"
BUNDLE_SUFFIX = ".bundle"
ZIP_SUFFIX = ".zip"

#: The `Error` of a zero-byte bundle of a repository without commits (not a failure).
EMPTY_REPOSITORY = "empty repository"
# How `verify` marks a bundle that failed its check; the next sync archives it again.
VERIFY_FAILED = "verify failed: "


class Kind(enum.Enum):
    USER = "user"
    BUNDLE = "bundle"
    ZIP = "zip"
    OTHER = "other"  # a key the layout does not define (left alone by every pass)


@dataclass(frozen=True)
class StoreKey:
    """A key taken apart: ``repo`` is "" unless ``kind`` is BUNDLE or ZIP."""

    login: str
    repo: str
    kind: Kind


def user_key(login: str) -> str:
    return login


def user_prefix(login: str) -> str:
    """What every key below the user starts with (its archives)."""
    return login + SEPARATOR


def bundle_key(login: str, repo: str) -> str:
    return f"{login}{SEPARATOR}{repo}{BUNDLE_SUFFIX}"


def zip_key(login: str, repo: str) -> str:
    return f"{login}{SEPARATOR}{repo}{ZIP_SUFFIX}"


def parse_key(key: str) -> StoreKey:
    """The login, repository and kind of ``key`` (names are not validated here)."""
    login, sep, rest = key.partition(SEPARATOR)
    if not sep:
        return StoreKey(login, "", Kind.USER)
    if SEPARATOR not in rest:
        for suffix, kind in ((BUNDLE_SUFFIX, Kind.BUNDLE), (ZIP_SUFFIX, Kind.ZIP)):
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return StoreKey(login, rest[: -len(suffix)], kind)
    return StoreKey(login, "", Kind.OTHER)


def is_below(key: str, login: str) -> bool:
    """Is ``key`` one of ``login``'s archives (or any key below the user)?"""
    return key.startswith(user_prefix(login))


def content_type(key: str) -> str:
    """The Content-Type of an object, derived from its key alone."""
    kind = parse_key(key).kind
    if kind is Kind.USER:
        return "application/json"
    if kind is Kind.ZIP:
        return "application/zip"
    if kind is Kind.BUNDLE:
        return "application/x-git-bundle"
    return "application/octet-stream"


def updated_metadata(head: Head, changes: Mapping[str, str]) -> dict[str, str]:
    """``head``'s metadata with ``changes`` applied, names spelled as the contract writes them
    (they are read back lower-cased; ``changes`` may use either spelling)."""
    meta = dict(head.metadata)
    for name, value in changes.items():
        meta[name.lower()] = value
    return canonical(meta)


@dataclass(frozen=True)
class UserCounts:
    """What the stats pass (and the web server) need per user, cached in Redis
    (`bulkbackup:syncd`, login -> `encode()`) by whoever last wrote the user's object:
    bundles with data (= SyncdRepos), zero-byte bundles of empty repositories, other zero-byte
    bundles (failed), whether the user's object has an Error, and ReportedRepos."""

    syncd: int
    empty: int
    failed: int
    error: bool
    reported: int = 0

    def encode(self) -> str:
        return f"{self.syncd} {self.empty} {self.failed} {int(self.error)} {self.reported}"

    @classmethod
    def decode(cls, text: str | None) -> UserCounts | None:
        """None for anything malformed. The older four-number form (without ReportedRepos)
        is still read, with ``reported`` 0."""
        try:
            numbers = [int(x) for x in (text or "").split()]
        except ValueError:
            return None
        if len(numbers) == 4:
            numbers.append(0)
        if len(numbers) != 5 or min(numbers) < 0:
            return None
        syncd, empty, failed, error, reported = numbers
        return cls(syncd, empty, failed, bool(error), reported)
