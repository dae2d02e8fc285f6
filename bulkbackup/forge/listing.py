"""The forge seam: what a listing says about an owner's repositories, and the `Lister` protocol.

A `Lister` turns logins into `OwnerListing`s: listed (with `RepoInfo`s), not modified since the
conditions it was given (REST's 304), gone (404, NOT_FOUND) or failed. GitHub REST is a lister
with a batch of one (forge/github_rest.py: `RestLister`, its ETags kept), GitHub GraphQL one
with batches of up to `github.graphql_batch` owners (forge/github_graphql.py). The `run` worker
has one loop for any lister (run/worker.py, with forge/listing_feed.py), and `sync` too
(backup/user_backup.py). A listing that comes from elsewhere than the forge (GH Archive's
events: the repositories that moved, their entries from the stored listing) is one more
`Lister` whose `step` sends nothing.

Each repository is read once, when its listing is built (`RepoInfo.from_rest`): a name that is
not a valid repository name becomes a `RejectedRepo` (that repository fails, the others do
not); a clone URL outside the forge's git host, or a time that is not a real date, is kept as
"refused" / "" so the pipeline decides with it as it always did. The REST-shaped entry goes
into the stored `<login>` object unchanged (REST field names: the contract).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

from bulkbackup.errors import InvalidName
from bulkbackup.names import check_login, check_repo_name, is_gist_id
from bulkbackup.timeutil import parse_api_time

# The ETags of an owner's last clean listing (REST: one a page), read from the archive; a
# conditional listing sends them (forge/github_rest.py).
Conditions = Callable[[str], Sequence[str]]


def api_time(value: object) -> str:
    """The API's time as given, or "" unless it is a real date in a sane range: anything
    else would go into metadata (and a far-future `9999-12-31T23:59:59Z` would look newer
    than every later push). A repository with "" cannot be seen to be unchanged, so it is
    archived again each pass."""
    if not isinstance(value, str) or parse_api_time(value) is None:
        return ""
    return value


def clone_url_refusal(url: object, clone_host: str) -> str:
    """Why ``url`` may not be cloned ("" if it may): only http(s) on the forge's git host
    (github.git_host, else the API's host), without credentials, query or fragment."""
    if not isinstance(url, str):
        return "no clone_url"
    refused = f"refusing clone URL outside {clone_host}: {url[:200]!r}"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: not a URL at all
        return refused
    if (parts.scheme not in ("http", "https") or parts.netloc.lower() != clone_host
            or parts.username or parts.password or parts.query or parts.fragment):
        return refused
    return ""


@dataclass(frozen=True)
class RepoInfo:
    """One repository as a listing gave it, read and checked once."""

    name: str  # a valid repository name (names.check_repo_name)
    clone_url: str  # "" when refused: see clone_refusal
    clone_refusal: str  # why the clone URL may not be used ("" when it may)
    default_branch: str | None
    pushed_at: str  # the API's time, or "" (api_time)
    updated_at: str
    size_kb: int | None  # None: the listing gave no number
    fork: bool
    has_wiki: bool | None  # None: the listing did not say (REST has_wiki, GraphQL hasWikiEnabled)
    # The latest release's tag, "" for none; None: the listing did not say (REST's has no
    # such field; GraphQL's `latestRelease`, stored as `latest_release`).
    latest_release: str | None
    # The entry as listed, with REST field names: what the user's object stores, unchanged.
    # Not to be modified (it is shared with the stored listing).
    rest: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_rest(cls, entry: dict[str, Any], clone_host: str) -> RepoInfo | RejectedRepo:
        """One REST-shaped listing entry (GraphQL's are mapped to REST names first)."""
        try:
            name = check_repo_name(entry.get("name"))
        except InvalidName as exc:
            return RejectedRepo(str(exc), entry)
        url = entry.get("clone_url")
        refusal = clone_url_refusal(url, clone_host)
        branch = entry.get("default_branch")
        size = entry.get("size")
        wiki = entry.get("has_wiki")
        latest = entry.get("latest_release", False)
        return cls(name=name, clone_url="" if refusal else str(url), clone_refusal=refusal,
                   default_branch=branch if isinstance(branch, str) else None,
                   pushed_at=api_time(entry.get("pushed_at")),
                   updated_at=api_time(entry.get("updated_at")),
                   size_kb=int(size) if isinstance(size, int) else None,
                   fork=bool(entry.get("fork")),
                   has_wiki=wiki if isinstance(wiki, bool) else None,
                   latest_release=(None if latest is False else
                                   latest[:1000] if isinstance(latest, str) else ""),
                   rest=entry)


@dataclass(frozen=True)
class RejectedRepo:
    """A listing entry whose name is not a valid repository name: it fails alone (counted,
    not stored as an archive), and stays in the stored listing as GitHub gave it."""

    error: str
    rest: dict[str, Any] = field(repr=False, compare=False)


RepoEntry = RepoInfo | RejectedRepo


# The most gists a listing keeps for one owner: GraphQL's one page (its most recently
# updated), REST's first page of 100. A user with more has only these archived.
MAX_GISTS = 100


@dataclass(frozen=True)
class GistInfo:
    """One public gist as a listing gave it, read and checked once (backup/gists.py)."""

    id: str  # lowercase hex (names.is_gist_id): the only part of it that becomes a key
    pushed_at: str  # the API's time, or "" (api_time); REST gives none
    updated_at: str
    # The entry as stored in `<login>/gists.json` (GIST_FIELDS: the same shape whichever
    # API listed it). Not to be modified.
    rest: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class RejectedGist:
    """A listed gist whose id is not hex: recorded in the gist list's `Error`, never a key."""

    error: str
    rest: dict[str, Any] = field(repr=False, compare=False)


GistEntry = GistInfo | RejectedGist
# The stored fields of a gist (REST names; `pushed_at` only GraphQL gives).
GIST_FIELDS = ("id", "node_id", "description", "public", "html_url", "created_at",
               "updated_at", "pushed_at")


def read_gists(entries: Sequence[object]) -> tuple[GistEntry, ...]:
    """A listing's gists (REST-shaped entries), at most MAX_GISTS, each checked."""
    out: list[GistEntry] = []
    for raw in entries[:MAX_GISTS]:
        if not isinstance(raw, dict):
            continue
        entry = {k: raw.get(k) for k in GIST_FIELDS}
        gist_id = entry["id"]
        if not is_gist_id(gist_id):
            out.append(RejectedGist(f"invalid gist id: {str(gist_id)[:80]!r}", entry))
            continue
        assert isinstance(gist_id, str)
        out.append(GistInfo(gist_id, api_time(entry["pushed_at"]),
                            api_time(entry["updated_at"]), entry))
    return tuple(out)


class ListingOutcome(Enum):
    LISTED = "listed"
    NOT_MODIFIED = "not modified"  # every page answered 304 to the conditions given
    GONE = "gone"  # the owner does not exist (REST's 404, GraphQL's NOT_FOUND)
    FAILED = "failed"  # the API failed for good (after retries), or the listing's bounds
    # Not the forge's listing: only the repositories whose refs moved (GH Archive's events),
    # their entries from the stored listing. The stored listing, its ETags and counts stay;
    # each of these repositories is fetched from its archived tips (backup/archived_listing.py).
    CHANGED = "changed"


@dataclass(frozen=True)
class OwnerListing:
    """One owner's listing, as a `Lister` finished it."""

    login: str
    outcome: ListingOutcome
    repos: tuple[RepoEntry, ...] = ()
    # The conditions for the next listing (REST: one ETag a page); kept on the user's object
    # after a clean sync. NOT_MODIFIED: the ones that were sent.
    etags: tuple[str, ...] = ()
    error: str = ""  # GONE, FAILED: why, as recorded on the user's object
    # The owner's public gists (read_gists); None: not asked (run.gists off, an
    # organization's GraphQL listing, REST's gist list failing, a CHANGED listing).
    gists: tuple[GistEntry, ...] | None = None

    @classmethod
    def listed(cls, login: str, entries: Sequence[dict[str, Any]], clone_host: str,
               etags: Sequence[str] = (), gists: Sequence[object] | None = None
               ) -> OwnerListing:
        return cls(login, ListingOutcome.LISTED,
                   tuple(RepoInfo.from_rest(e, clone_host) for e in entries), tuple(etags),
                   gists=None if gists is None else read_gists(gists))

    @classmethod
    def changed(cls, login: str, entries: Sequence[dict[str, Any]], clone_host: str
                ) -> OwnerListing:
        """Only these repositories changed (see ListingOutcome.CHANGED)."""
        return cls(login, ListingOutcome.CHANGED,
                   tuple(RepoInfo.from_rest(e, clone_host) for e in entries))

    @classmethod
    def failed(cls, login: str, outcome: ListingOutcome, error: str) -> OwnerListing:
        return cls(login, outcome, error=error)

    @property
    def stored(self) -> list[dict[str, Any]]:
        """The array the user's object stores: every entry as listed, in order."""
        return [entry.rest for entry in self.repos]

    def to_json(self) -> dict[str, Any] | None:
        """Every field as JSON (one codec a field: `_CODECS`), for another process to read
        back with `from_json` (run/listing_share.py); None if a field has no codec yet."""
        try:
            return {f.name: _CODECS[f.name][0](getattr(self, f.name)) for f in fields(self)}
        except KeyError:
            return None

    @classmethod
    def from_json(cls, doc: object, clone_host: str) -> OwnerListing:
        """A listing `to_json` wrote, checked as a fresh one is: the login must be valid and
        every entry goes through `RepoInfo.from_rest` again. ValueError when malformed."""
        if not isinstance(doc, dict) or set(doc) != set(_CODECS):
            raise ValueError("not a listing: its fields differ")
        try:
            return cls(**{name: decode(doc[name], clone_host)
                          for name, (_, decode) in _CODECS.items()})
        except (TypeError, ValueError, InvalidName) as exc:
            raise ValueError(f"not a listing: {exc}") from None


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _entries(value: object, clone_host: str) -> tuple[RepoEntry, ...]:
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise ValueError("expected a list of objects")
    return tuple(RepoInfo.from_rest(entry, clone_host) for entry in value)


def _objects(value: object) -> list[object]:
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise ValueError("expected a list of objects")
    return value


# OwnerListing's fields as JSON, one (encode, decode(value, clone_host)) pair a field: a new
# field gets its pair here (tests/test_listing.py fails until it has one).
_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[object, str], Any]]] = {
    "login": (str, lambda v, _: check_login(_string(v))),
    "outcome": (lambda o: o.value, lambda v, _: ListingOutcome(v)),
    "repos": (lambda repos: [r.rest for r in repos], _entries),
    "etags": (list, lambda v, _: _strings(v)),
    "error": (str, lambda v, _: _string(v)),
    "gists": (lambda gists: None if gists is None else [g.rest for g in gists],
              lambda v, _: None if v is None else read_gists(_objects(v))),
}


class Batching(Enum):
    """How many owners a lister's request carries, hence when a worker claims."""

    # One owner a request (REST): a claim is the batch sizer's batch, made when the worker
    # holds no user (run/batching.py).
    ONE = "one"
    # Many owners a request (GraphQL): the worker claims until the next request is full
    # (forge/listing_feed.py: ListingFeed.wanted).
    FILL = "fill"


@dataclass(frozen=True)
class TakenBack:
    """The owners a lister held and had not returned, handed back (see `Lister.take_back`)."""

    # Their listing was under way when it stopped: a rate limit past the deadline counts an
    # attempt for each (REST: the owner being listed; GraphQL: every owner of the stream).
    stopped: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()  # not started: given back as they were

    @property
    def all(self) -> tuple[str, ...]:
        return self.stopped + self.waiting


class Lister(Protocol):
    """Lists owners' repositories: `submit` logins, `step` while `queued`, each step
    returning the owners it finished. Every wait and request is bounded by the settings the
    lister was built with; `step` raises RateLimited (nothing lost: the owners stay queued)
    when a wait for quota would pass `deadline`, Interrupted when stopped, TokenRefused
    (ConfigError) when the forge refuses a token."""

    @property
    def batching(self) -> Batching: ...

    @property
    def queued(self) -> int:
        """Requests' worth waiting for a step (0: nothing to do)."""
        ...

    def submit(self, logins: Sequence[str]) -> list[OwnerListing]:
        """Queue owners for listing; returns those finished at once (invalid logins)."""
        ...

    def step(self, deadline: float | None) -> list[OwnerListing]:
        """One request's worth of listing; the owners it finished. `deadline`:
        time.monotonic() past which a wait for quota raises RateLimited."""
        ...

    def take_back(self) -> TakenBack:
        """Forget every owner submitted and not returned yet (to give them back)."""
        ...

    def wait_ready(self) -> None:
        """Wait, sending nothing, until the forge's quota allows a request (at most
        github.max_rate_wait_s at a time); Interrupted when the lister's stop is set."""
        ...

    def close(self) -> None: ...


# How a `run` worker or `sync` gets its lister: given the owners' conditions (the archive's
# ETags), one lister for the process.
ListerFactory = Callable[[Conditions], Lister]


def no_conditions(_login: str) -> Sequence[str]:
    """For a lister used without an archive (tests, benchmarks): every listing in full."""
    return ()


def admit(logins: Sequence[str], queued: Container[str]
          ) -> tuple[list[str], list[OwnerListing]]:
    """A lister's `submit`: (the logins to queue, in order, once each and not ``queued``
    already; a FAILED listing for each invalid login, finished without a request)."""
    admitted: list[str] = []
    refused: list[OwnerListing] = []
    for login in dict.fromkeys(logins):
        if login in queued:
            continue
        try:
            check_login(login)
        except InvalidName as exc:
            refused.append(OwnerListing.failed(login, ListingOutcome.FAILED, str(exc)))
            continue
        admitted.append(login)
    return admitted, refused
