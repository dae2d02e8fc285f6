"""The archive's metadata names (docs/design.md), written in this case and read back
lower-cased by every store (`Head.get` ignores case); `canonical` restores the spelling for
a write of metadata read back; `fitted` shortens the `Error` so that the whole fits the
store's limit (the store refuses metadata over it).
"""

from __future__ import annotations

from collections.abc import Mapping

from bulkbackup.store.base import METADATA_LIMIT_BYTES, clean_value, metadata_bytes

LAST_SYNC = "LastSync"
SYNCD_REPOS = "SyncdRepos"
REPORTED_REPOS = "ReportedRepos"
UPDATED_AT = "UpdatedAt"
PUSHED_AT = "PushedAt"
ERROR = "Error"
# The per-page ETags of the last listing, for conditional requests (not in DESIGN.md's
# table: an addition, kept in the user object's metadata rather than in Redis memory).
LISTING_ETAGS = "ListingETags"
# Incremental archives (README "Incremental archives"): on a full bundle, the id of the chain
# it is the base of, and how many increments on top of it are committed.
CHAIN = "Chain"
INCREMENTS = "Increments"
CHAIN_BYTES = "ChainBytes"  # the committed increments' bytes (the half-size rule)
KEPT_SINCE = "KeptSince"  # the oldest kept chain's id (retention, without a listing)
# When `verify` last proved the bundle restorable (RFC 3339 UTC).
VERIFIED_AT = "VerifiedAt"
# What that verify noted but did not fail for: `git fsck` messages about objects git reads
# (e.g. a 2011 commit's time zone `+051800`), as `<msg-id> <count> (<object>); ...`.
VERIFY_NOTES = "VerifyNotes"
# On a repository's bundle: the LFS objects its archived refs point to that could not be
# stored, and why (`<n> LFS objects not stored: <oid>: <reason>; ...`); the repository's own
# archive is not failed by it (docs/archive.md "Git LFS objects").
LFS_ERROR = "LfsError"
# On `<repo>.releases.json` (backup/releases.py): the list's ETag (a conditional request
# next time), the latest release's tag the listing gave (GraphQL: unchanged, not asked
# again) and the list's sha256 (stored only when it changed); its `Error` names the assets
# that could not be stored. On an asset: its id at GitHub.
RELEASES_ETAG = "ReleasesETag"
LATEST_RELEASE = "LatestRelease"
CONTENT_SHA256 = "ContentSha256"
ASSET_ID = "AssetId"
# On the user's object: how many gists its last listing with gists gave (backup/gists.py:
# a user with none, and none before, costs no store request).
GISTS = "Gists"
# On the user's object: how many repositories of its last listing say they have a wiki
# (`has_wiki`). A REST listing's 304 still checks those wikis (their edits move no
# repository); 0 costs no store request, missing (an object older than it) one read.
WIKIS = "Wikis"
# The worker token's name (DESIGN.md "Remote workers") on every object `serve` wrote for a
# remote worker: what was archived by whom (`worker-token revoke --redo` finds the users
# through Redis, not by reading this).
WORKER = "Worker"

_CANONICAL = {n.lower(): n for n in (LAST_SYNC, SYNCD_REPOS, REPORTED_REPOS, UPDATED_AT,
                                     PUSHED_AT, ERROR, LISTING_ETAGS, VERIFIED_AT, VERIFY_NOTES,
                                     CHAIN, INCREMENTS, CHAIN_BYTES, KEPT_SINCE, WORKER,
                                     LFS_ERROR, RELEASES_ETAG, LATEST_RELEASE,
                                     CONTENT_SHA256, ASSET_ID, GISTS)}


def canonical(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata read back lower-cased, with the contract's names restored for writing."""
    return {_CANONICAL.get(k, k): v for k, v in metadata.items()}


#: What ends an Error shortened by `fitted`.
CUT_MARK = "..."


def fitted(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` with its `Error` (the one value that can be long: a git or API failure's
    text) cut to end in CUT_MARK where the whole would exceed the store's limit
    (store.base.METADATA_LIMIT_BYTES), measured as the store cleans it (ASCII, one line).
    Without an `Error`, or when even a cut one cannot fit, it is returned as it is (the store
    then refuses it)."""
    out = dict(metadata)
    name = next((k for k in out if k.lower() == ERROR.lower()), None)
    if name is None:
        return out
    error = clean_value(out[name])
    others = metadata_bytes({k: clean_value(v) for k, v in out.items() if k != name})
    room = METADATA_LIMIT_BYTES - others - len(name)
    if len(error) > room > len(CUT_MARK):
        out[name] = error[: room - len(CUT_MARK)] + CUT_MARK
    return out
