"""The store layout: the only place that spells or parses a store key.

    <login>                   the user's repository list (JSON array), with the user's metadata
    <login>/<repo>.bundle     `git bundle create --all` of a mirror clone (zero bytes: no archive)
    <login>/<repo>.zip        the default branch as GitHub's zip archive
    <login>/<repo>.bundle.d/<chain>/<seq>.bundle
                              part <seq> of chain <chain> (README "Incremental archives"):
                              000001.. increments on the base; 000000 a kept chain's base
    <login>/<repo>.wiki.bundle (+ .wiki.zip, .wiki.bundle.d/...)
                              the repository's wiki, archived as a repository named
                              `<repo>.wiki` (GitHub refuses repository names ending so)
    <login>/<repo>.lfs/<oid>  a Git LFS object the archived refs point to (sha256 oid)
    <login>/<repo>.releases.json
                              the repository's releases (backup/releases.py)
    <login>/<repo>.releases/<tag>/<asset>
                              a release's asset (zero bytes with an `Error`: not stored)
    <login>/gists.json        the user's public gists as listed (backup/gists.py)
    <login>/gists/<id>.bundle (+ .zip, .bundle.d/...)
                              a gist, archived as a repository named `gists/<id>` (a gist's
                              id is hex: names.is_gist_id; no repository name has a `/`)

Also the per-user summary cached in Redis for the stats pass and the users list
(`UserCounts`, with the Error's reason shortened by `short_reason`), the `Error` of an
empty repository, and the metadata update that hides the lower-casing of names on read.
An object's Content-Type is the store's rule (store.base.content_type), from its key.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from bulkbackup.archive.metadata import canonical, fitted
from bulkbackup.names import (
    GISTS_FOLDER,
    WIKI_SUFFIX,
    check_key_segment,
    is_gist_id,
    is_key_segment,
    is_wiki_name,
)
from bulkbackup.redact import redact
from bulkbackup.store.base import Head

SEPARATOR = "/"
BUNDLE_SUFFIX = ".bundle"
ZIP_SUFFIX = ".zip"
PARTS_SUFFIX = ".bundle.d"
LFS_SUFFIX = ".lfs"
RELEASES_SUFFIX = ".releases"
RELEASES_LIST_SUFFIX = ".releases.json"
GISTS_LIST = GISTS_FOLDER + ".json"
SEQ_DIGITS = 6

#: The `Error` of a zero-byte bundle of a repository without commits (not a failure).
EMPTY_REPOSITORY = "empty repository"
# How `verify` marks a bundle that failed its check; the next sync archives it again.
VERIFY_FAILED = "verify failed: "


class Kind(enum.Enum):
    USER = "user"
    BUNDLE = "bundle"
    ZIP = "zip"
    PART = "part"  # one bundle of a chain: an increment, or a kept chain's base
    LFS = "lfs"  # a Git LFS object of a repository (``oid``)
    RELEASES = "releases"  # a repository's release list
    ASSET = "asset"  # a release's asset (``tag``, ``asset``)
    GISTS = "gists"  # the user's gist list (a gist's BUNDLE, ZIP, PART: ``repo`` `gists/<id>`)
    OTHER = "other"  # a key the layout does not define (left alone by every pass)


@dataclass(frozen=True)
class StoreKey:
    """A key taken apart: ``repo`` is "" unless ``kind`` is BUNDLE, ZIP, PART or LFS (a
    wiki's BUNDLE, ZIP and PART have ``repo`` `<repo>.wiki`: see ``wiki_of``); ``chain`` and
    ``seq`` are a PART's, ``oid`` an LFS object's, ``tag`` and ``asset`` an ASSET's."""

    login: str
    repo: str
    kind: Kind
    chain: str = ""
    seq: int = 0
    oid: str = ""
    tag: str = ""
    asset: str = ""


def wiki_name(repo: str) -> str:
    """The name ``repo``'s wiki is archived under (its keys are a repository's)."""
    return repo + WIKI_SUFFIX


def wiki_of(name: str) -> str | None:
    """The repository whose wiki ``name`` is, or None (``name`` is no wiki's)."""
    return name[: -len(WIKI_SUFFIX)] if is_wiki_name(name) else None


def gist_name(gist_id: str) -> str:
    """The name a gist is archived under (its keys are a repository's, in `gists/`);
    ValueError for an id that is not hex (never a key)."""
    if not is_gist_id(gist_id):
        raise ValueError(f"invalid gist id {gist_id[:80]!r}")
    return f"{GISTS_FOLDER}{SEPARATOR}{gist_id}"


def gist_of(name: str) -> str | None:
    """The gist id whose archive ``name`` is, or None."""
    folder, sep, gist_id = name.partition(SEPARATOR)
    return gist_id if sep and folder == GISTS_FOLDER and is_gist_id(gist_id) else None


def gists_key(login: str) -> str:
    """The user's gist list (JSON array: backup/gists.py)."""
    return f"{login}{SEPARATOR}{GISTS_LIST}"


def gists_work_folder() -> str:
    """The folder a gist's name puts its files in (`gists`), for the writer's work dir."""
    return GISTS_FOLDER


def gists_prefix(login: str) -> str:
    """What the keys of every gist archive of ``login`` start with."""
    return f"{login}{SEPARATOR}{GISTS_FOLDER}{SEPARATOR}"


def user_key(login: str) -> str:
    return login


# Where a remote worker's upload waits for serve's checks before it is copied to its key
# (web/lease_uploads.py): a top-level folder that is no login, so no user's listing holds it.
STAGING_FOLDER = ".staging"


def staging_prefix(login: str) -> str:
    return f"{STAGING_FOLDER}{SEPARATOR}{login}{SEPARATOR}"


def staging_key(login: str, nonce: str) -> str:
    return staging_prefix(login) + nonce


def user_prefix(login: str) -> str:
    """What every key below the user starts with (its archives)."""
    return login + SEPARATOR


def bundle_key(login: str, repo: str) -> str:
    return f"{login}{SEPARATOR}{repo}{BUNDLE_SUFFIX}"


def zip_key(login: str, repo: str) -> str:
    return f"{login}{SEPARATOR}{repo}{ZIP_SUFFIX}"


def parts_prefix(login: str, repo: str, chain: str = "") -> str:
    """What the keys of every part of ``repo`` (or of one chain) start with."""
    base = f"{login}{SEPARATOR}{repo}{PARTS_SUFFIX}{SEPARATOR}"
    return f"{base}{chain}{SEPARATOR}" if chain else base


def part_key(login: str, repo: str, chain: str, seq: int) -> str:
    """Part ``seq`` of ``chain``: 0 is a kept chain's base, 1.. its increments."""
    if not CHAIN_ID.fullmatch(chain) or not 0 <= seq < 10**SEQ_DIGITS:
        raise ValueError(f"invalid chain part {chain!r}/{seq}")
    return f"{parts_prefix(login, repo, chain)}{seq:0{SEQ_DIGITS}d}{BUNDLE_SUFFIX}"


LFS_OID = re.compile(r"[0-9a-f]{64}")


def lfs_prefix(login: str, repo: str) -> str:
    """What the keys of ``repo``'s LFS objects start with (one listing finds them all)."""
    return f"{login}{SEPARATOR}{repo}{LFS_SUFFIX}{SEPARATOR}"


def lfs_key(login: str, repo: str, oid: str) -> str:
    """An LFS object, by its sha256 (the content's: checked before it is stored)."""
    if not LFS_OID.fullmatch(oid):
        raise ValueError(f"invalid LFS oid {oid[:80]!r}")
    return lfs_prefix(login, repo) + oid


def releases_key(login: str, repo: str) -> str:
    """The repository's release list (JSON array: backup/releases.py)."""
    return f"{login}{SEPARATOR}{repo}{RELEASES_LIST_SUFFIX}"


def assets_prefix(login: str, repo: str) -> str:
    """What the keys of every asset of ``repo``'s releases start with."""
    return f"{login}{SEPARATOR}{repo}{RELEASES_SUFFIX}{SEPARATOR}"


def asset_key(login: str, repo: str, tag: str, name: str) -> str:
    """A release's asset; the tag and name come from the API: InvalidName unless each is one
    safe key segment (names.is_key_segment)."""
    check_key_segment(tag, "release tag")
    check_key_segment(name, "asset name")
    return f"{assets_prefix(login, repo)}{tag}{SEPARATOR}{name}"


# A chain id is the base's archive time, to the microsecond (so ids sort by time).
CHAIN_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z")
_PART_NAME = re.compile(rf"([0-9]{{{SEQ_DIGITS}}}){re.escape(BUNDLE_SUFFIX)}")


def chain_id(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def chain_time(chain: str) -> datetime | None:
    """When the chain's base was archived; None for anything that is not a chain id."""
    if not CHAIN_ID.fullmatch(chain):
        return None
    try:
        return datetime.strptime(chain, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_key(key: str) -> StoreKey:
    """The login, repository and kind of ``key`` (names are not validated here)."""
    login, sep, rest = key.partition(SEPARATOR)
    if not sep:
        return StoreKey(login, "", Kind.USER)
    if rest == GISTS_LIST:
        return StoreKey(login, "", Kind.GISTS)
    if SEPARATOR not in rest:
        for suffix, kind in ((BUNDLE_SUFFIX, Kind.BUNDLE), (ZIP_SUFFIX, Kind.ZIP),
                             (RELEASES_LIST_SUFFIX, Kind.RELEASES)):
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return StoreKey(login, rest[: -len(suffix)], kind)
        return StoreKey(login, "", Kind.OTHER)
    folder, _, tail = rest.partition(SEPARATOR)
    if folder == GISTS_FOLDER:
        return _gist_key(login, tail)
    if (folder.endswith(LFS_SUFFIX) and len(folder) > len(LFS_SUFFIX)
            and LFS_OID.fullmatch(tail)):
        return StoreKey(login, folder[: -len(LFS_SUFFIX)], Kind.LFS, oid=tail)
    chain, _, name = tail.partition(SEPARATOR)
    if (folder.endswith(RELEASES_SUFFIX) and len(folder) > len(RELEASES_SUFFIX)
            and is_key_segment(chain) and is_key_segment(name)):
        return StoreKey(login, folder[: -len(RELEASES_SUFFIX)], Kind.ASSET, tag=chain,
                        asset=name)
    seq = _PART_NAME.fullmatch(name)
    if (folder.endswith(PARTS_SUFFIX) and len(folder) > len(PARTS_SUFFIX)
            and chain_time(chain) is not None and seq is not None):
        return StoreKey(login, folder[: -len(PARTS_SUFFIX)], Kind.PART, chain, int(seq[1]))
    return StoreKey(login, "", Kind.OTHER)


def _gist_key(login: str, tail: str) -> StoreKey:
    """A key below `<login>/gists/`: a gist's bundle, zip or part (else OTHER)."""
    for suffix, kind in ((BUNDLE_SUFFIX, Kind.BUNDLE), (ZIP_SUFFIX, Kind.ZIP)):
        if tail.endswith(suffix) and is_gist_id(tail[: -len(suffix)]):
            return StoreKey(login, gist_name(tail[: -len(suffix)]), kind)
    folder, _, rest = tail.partition(SEPARATOR)
    chain, _, name = rest.partition(SEPARATOR)
    seq = _PART_NAME.fullmatch(name)
    gist_id = folder[: -len(PARTS_SUFFIX)]
    if (folder.endswith(PARTS_SUFFIX) and is_gist_id(gist_id)
            and chain_time(chain) is not None and seq is not None):
        return StoreKey(login, gist_name(gist_id), Kind.PART, chain, int(seq[1]))
    return StoreKey(login, "", Kind.OTHER)


def is_below(key: str, login: str) -> bool:
    """Is ``key`` one of ``login``'s archives (or any key below the user)?"""
    return key.startswith(user_prefix(login))


def file_name(key: str) -> str:
    """The name a downloaded object is saved under: a part's names its repository and
    place in the chain (`<repo>.<chain>.<seq>.bundle`), so parts of one repository sort in
    the order they apply."""
    parsed = parse_key(key)
    if parsed.kind is Kind.USER:
        return f"{parsed.login}.json"
    if parsed.kind is Kind.PART:
        repo = parsed.repo.rsplit(SEPARATOR, 1)[-1]  # a gist's: its id
        return f"{repo}.{parsed.chain}.{parsed.seq:0{SEQ_DIGITS}d}{BUNDLE_SUFFIX}"
    if parsed.kind is Kind.ASSET:  # names from the API: only safe characters in a header
        return _SAFE_FILE.sub("_", f"{parsed.repo}.{parsed.tag}.{parsed.asset}")[:200]
    return key.rsplit(SEPARATOR, 1)[-1]


_SAFE_FILE = re.compile(r"[^A-Za-z0-9._+-]")


def updated_metadata(head: Head, changes: Mapping[str, str]) -> dict[str, str]:
    """``head``'s metadata with ``changes`` applied, names spelled as the contract writes them
    (they are read back lower-cased; ``changes`` may use either spelling), its `Error` cut to
    fit the store's limit (metadata.fitted)."""
    meta = dict(head.metadata)
    for name, value in changes.items():
        meta[name.lower()] = value
    return fitted(canonical(meta))


#: The longest error reason a summary keeps (enough for results.ErrorKind's marks: a partial
#: sync's "<n> of <m> repositories failed: " and a gone user's "user <login> not found on
#: GitHub (" both fit, a login being at most 39 characters).
REASON_MAX_CHARS = 120
UNPRINTABLE_REASON = "(an error without printable text)"


def short_reason(text: str) -> str:
    """``text`` on one line, for a summary and the users list: tokens scrubbed, every
    control, format or separator character (newlines, bidi overrides, lone surrogates) a
    space, runs of spaces one, at most REASON_MAX_CHARS (cut: ending in "..."). Never ""
    for a text that is not "" (a summary with an error always has a reason)."""
    # Redacted whole (a cut could leave part of a token); then only a bounded head is read.
    head = redact(text)[: REASON_MAX_CHARS * 8]
    short = " ".join("".join(c if c.isprintable() else " " for c in head).split())
    if not short:
        return UNPRINTABLE_REASON if text else ""
    if len(short) > REASON_MAX_CHARS:
        short = short[: REASON_MAX_CHARS - 3].rstrip() + "..."
    return short


# UserCounts.encode's form: five numbers (the error 0 or 1), then a reason after a space.
_COUNTS_WRITTEN = re.compile(r"(\d+) (\d+) (\d+) ([01]) (\d+)(?: (.*))?", re.ASCII | re.DOTALL)


# Not frozen: the stats pass and the users page decode one per user, and a frozen
# dataclass's __init__ costs four times a plain one's.
@dataclass(slots=True)
class UserCounts:
    """What the stats pass and the users list need per user, cached in Redis
    (`bulkbackup:syncd`, login -> `encode()`) by whoever last wrote the user's object:
    bundles with data (= SyncdRepos), zero-byte bundles of empty repositories, other zero-byte
    bundles (failed), whether the user's object has an Error, ReportedRepos, and the Error's
    reason shortened (short_reason; None: not known, a summary written by an older version).

    Encoded `<syncd> <empty> <failed> <error 0/1> <reported>[ <reason>]`: the reason is the
    rest of the text (spaces and all), present only with an error."""

    syncd: int
    empty: int
    failed: int
    error: bool
    reported: int = 0
    reason: str | None = None

    def encode(self) -> str:
        numbers = f"{self.syncd} {self.empty} {self.failed} {int(self.error)} {self.reported}"
        reason = short_reason(self.reason or "") if self.error else ""
        return f"{numbers} {reason}" if reason else numbers

    @classmethod
    def decode(cls, text: str | None) -> UserCounts | None:
        """None for anything malformed. The older forms are still read: four numbers
        (without ReportedRepos: ``reported`` 0) or five, both without the reason (None)."""
        # The form encode() writes, in one match: every row of the users page decodes one.
        written = _COUNTS_WRITTEN.fullmatch(text) if text else None
        if written is not None:
            syncd, empty, failed, error, reported, reason = written.groups()
            if error == "1":
                return cls(int(syncd), int(empty), int(failed), True, int(reported),
                           short_reason(reason) or None if reason is not None else None)
            return cls(int(syncd), int(empty), int(failed), False, int(reported), None)
        return cls._decode_any(text)

    @classmethod
    def _decode_any(cls, text: str | None) -> UserCounts | None:
        """decode() for every form, written or older (the slow way)."""
        parts = (text or "").split(" ", 5)
        reason = short_reason(parts.pop()) if len(parts) == 6 else None
        numbers_text = " ".join(parts).split()
        if not all(x.isascii() and x.isdigit() for x in numbers_text):
            return None
        numbers = [int(x) for x in numbers_text]
        if len(numbers) == 4 and reason is None:
            numbers.append(0)
        if len(numbers) != 5 or numbers[3] > 1:
            return None
        syncd, empty, failed, error, reported = numbers
        return cls(syncd, empty, failed, bool(error), reported,
                   (reason or None) if error else None)
