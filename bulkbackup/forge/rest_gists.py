"""REST's side of a user's gists (docs/archive.md "Gists"): the gist list beside the pages.

`GET /users/<login>/gists` is asked once per listed user (`GitHub.list_gists`), always with
the ETag of the last clean listing, kept among the pages' as `gists:<etag>`. The user is "not
modified" only when the pages and the gist list all answer 304; a changed gist list under
unchanged pages lists the pages again in full; changed pages with an unchanged gist list
(304: free) leave the gists unasked this pass (`OwnerListing.gists` None: none changed). A
gist list that fails leaves the gists unasked too; the pages stand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bulkbackup.config import GitHubSettings
from bulkbackup.errors import GitHubError
from bulkbackup.forge.listing import ListingOutcome, OwnerListing

log = logging.getLogger(__name__)

# How the gist list's ETag is told apart among the pages' in the user's ListingETags.
GISTS_ETAG = "gists:"


@dataclass(frozen=True)
class GistList:
    """A user's public gists, one page (listing.MAX_GISTS); ``etag`` "" when unusable;
    ``not_modified`` when the ETag sent still holds (304: free, no entries)."""

    entries: list[dict[str, Any]]
    etag: str = ""
    not_modified: bool = False


class Pages(Protocol):
    """A user's listing pages (github_rest.Listing: that module imports this one)."""

    repos: list[dict[str, Any]]
    etags: list[str]
    not_modified: bool


class Client(Protocol):
    """What the gist list needs of the REST client (github_rest.GitHub)."""

    settings: GitHubSettings

    def list_gists(self, login: str, etag: str, deadline: float) -> GistList: ...

    def list_repos(self, login: str, etags: Sequence[str] | None = None,
                   deadline: float | None = None) -> Pages: ...


def with_gists(github: Client, login: str, got: Pages, gist_etag: str,
               deadline: float | None) -> OwnerListing:
    """The listing of ``login`` (its pages ``got``) with its gists (see the module's doc)."""
    host = github.settings.clone_host
    ends = deadline if deadline is not None else (
        time.monotonic() + github.settings.user_deadline_s)
    try:
        gists = github.list_gists(login, gist_etag, ends)
        if got.not_modified and not gists.not_modified:
            got = github.list_repos(login, [], ends)
    except GitHubError as exc:  # the gists are not asked this time; the pages stand
        log.warning("%s: gists not listed: %s", login, exc)
        if got.not_modified:
            return OwnerListing(login, ListingOutcome.NOT_MODIFIED, etags=tuple(got.etags))
        return OwnerListing.listed(login, got.repos, host, got.etags)
    etags = (*got.etags, GISTS_ETAG + gists.etag) if gists.etag else tuple(got.etags)
    if got.not_modified:
        return OwnerListing(login, ListingOutcome.NOT_MODIFIED, etags=etags)
    return OwnerListing.listed(login, got.repos, host, etags,
                               None if gists.not_modified else gists.entries)
