"""The forge seam's pure rules (forge/listing.py): a listing entry read once into a `RepoInfo`,
an owner's listing, REST as a lister with a batch of one, and the feed's claim rule for it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbackup.config import GitHubSettings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.github_rest import GitHub, RestLister
from bulkbackup.forge.listing import (
    ListingOutcome,
    OwnerListing,
    RejectedRepo,
    RepoInfo,
    TakenBack,
    read_gists,
)
from bulkbackup.forge.listing_feed import ListingFeed
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.queue import keys

HOST = "github.com"
GOOD = {"name": "hello", "clone_url": "https://github.com/octo/hello.git", "fork": False,
        "default_branch": "main", "size": 12, "has_wiki": True,
        "pushed_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:06Z",
        "owner": {"login": "octo"}}


def test_an_entry_is_read_once_and_kept_as_listed() -> None:
    info = RepoInfo.from_rest(GOOD, HOST)
    assert isinstance(info, RepoInfo)
    assert (info.name, info.clone_url, info.clone_refusal) == (
        "hello", GOOD["clone_url"], "")
    assert (info.default_branch, info.size_kb, info.fork, info.has_wiki) == ("main", 12, False,
                                                                             True)
    assert (info.pushed_at, info.updated_at) == (GOOD["pushed_at"], GOOD["updated_at"])
    assert info.rest is GOOD  # stored unchanged, REST field names and all


def test_a_name_that_is_not_a_repository_name_is_rejected_alone() -> None:
    bad = {**GOOD, "name": "../etc"}
    listing = OwnerListing.listed("octo", [GOOD, bad, {**GOOD, "name": "other"}], HOST)
    rejected = listing.repos[1]
    assert isinstance(rejected, RejectedRepo) and "invalid repository name" in rejected.error
    assert [type(e) for e in listing.repos] == [RepoInfo, RejectedRepo, RepoInfo]
    assert listing.stored == [GOOD, bad, {**GOOD, "name": "other"}]  # every entry, in order


def refusal(url: object, host: str = HOST) -> str:
    info = RepoInfo.from_rest({**GOOD, "clone_url": url}, host)
    assert isinstance(info, RepoInfo)
    assert (info.clone_url == "") == bool(info.clone_refusal)
    return info.clone_refusal


def test_clone_urls_only_on_the_git_host_without_credentials() -> None:
    assert refusal("https://github.com/octo/hello.git") == ""
    assert refusal("http://GitHub.com/octo/hello.git") == ""  # hosts ignore case
    assert refusal("https://git.example/octo/hello.git", "git.example") == ""
    assert refusal(None) == "no clone_url"
    for url in ("https://evil.example/octo/hello.git", "ssh://github.com/octo/hello.git",
                "file:///etc/passwd", "https://user:pw@github.com/octo/hello.git",
                "https://github.com/octo/hello.git?x=1", "https://github.com/o/h.git#frag",
                "https://github.com:8443/octo/hello.git"):
        assert refusal(url).startswith("refusing clone URL outside github.com: "), url
    # Not a URL at all (urlsplit raises): refused for that repository alone; it was an
    # internal error of the whole user when the URL was read at clone time.
    assert refusal("http://[github.com/octo/hello.git").startswith("refusing clone URL")
    assert len(refusal("https://evil.example/" + "x" * 10_000)) < 300


def test_times_that_are_not_real_dates_are_empty() -> None:
    for value in ("9999-12-31T23:59:59Z", "yesterday", 12, None, "2026-13-01T00:00:00Z"):
        info = RepoInfo.from_rest({**GOOD, "pushed_at": value, "updated_at": value}, HOST)
        assert isinstance(info, RepoInfo)
        assert (info.pushed_at, info.updated_at) == ("", ""), value


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
FIELDS = st.sampled_from(["name", "clone_url", "fork", "default_branch", "size", "has_wiki",
                          "pushed_at", "updated_at"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS | st.text(max_size=8), JSON | st.text(max_size=300), max_size=9))
def test_any_entry_is_read_without_raising(entry: dict[str, Any]) -> None:
    got = RepoInfo.from_rest(entry, HOST)
    assert got.rest is entry
    if isinstance(got, RepoInfo):
        assert got.size_kb is None or isinstance(got.size_kb, int)
        assert got.default_branch is None or isinstance(got.default_branch, str)
        assert isinstance(got.fork, bool) and got.has_wiki in (None, True, False)


def rest_lister() -> RestLister:
    # No request is sent: submit() and take_back() only queue and forget.
    settings = GitHubSettings(api="rest")
    return RestLister(GitHub(settings, broker=QuotaBroker(None, ())))


def test_rest_is_a_batch_of_one_and_gives_back_the_owner_it_was_listing_first() -> None:
    lister = rest_lister()
    failed = lister.submit(["a", "bad login", "b", "a", "c"])
    assert [(x.login, x.outcome) for x in failed] == [("bad login", ListingOutcome.FAILED)]
    assert lister.queued == 3
    assert lister.take_back() == TakenBack(stopped=("a",), waiting=("b", "c"))
    assert lister.queued == 0 and lister.take_back() == TakenBack()


def test_rest_claims_the_sizers_batch_only_when_it_holds_no_user() -> None:
    feed = ListingFeed(rest_lister(), 100)
    assert feed.wanted(None, 4, 2, 32) == 4
    feed.add([keys.member("a"), keys.member("b")])
    assert feed.wanted(10, 4, 2, 32) == 0  # the claimed users are listed and synced first
    back = feed.take_back()
    assert back == TakenBack((keys.member("a"),), (keys.member("b"),))
    assert feed.held == 0 and feed.wanted(10, 3, 2, 32) == 3


def graphql_feed(shares: bool) -> ListingFeed:
    settings = GitHubSettings(api_url="http://127.0.0.1:9", tokens=("test-token-000000000001",))
    return ListingFeed(GraphQLLister(settings, QuotaBroker(None, settings.tokens)), 100, shares)


def test_graphql_claims_a_full_query_when_listings_are_handed_over() -> None:
    """Handed over (run/listing_share.py): a full query whatever the share of the users
    left; not handed over (a remote worker): no more than the share (1/(2 x procs))."""
    shared, alone = graphql_feed(True), graphql_feed(False)
    assert shared.wanted(None, 4, 2, 32) == 32 and alone.wanted(None, 4, 2, 32) == 4
    assert shared.wanted(12, 4, 2, 1000) == 100 and alone.wanted(12, 4, 2, 1000) == 3
    shared.add([keys.member(f"u{i}") for i in range(90)])
    assert shared.wanted(12, 4, 2, 1000) == 10  # the room left in the next query
    assert not ListingFeed(rest_lister(), 100, True).shares  # REST: one user at a time


def test_the_surplus_of_ready_users_leaves_the_first_and_the_failed() -> None:
    feed = graphql_feed(True)
    listings = [OwnerListing("a", ListingOutcome.LISTED),
                OwnerListing("b", ListingOutcome.FAILED, error="e"),
                OwnerListing("c", ListingOutcome.GONE, error="gone"),
                OwnerListing("d", ListingOutcome.FAILED, error="e"),
                OwnerListing("e", ListingOutcome.LISTED)]
    feed.ready.extend((keys.member(x.login), x) for x in listings)
    out = feed.surplus(2)
    assert [m for m, _ in out] == [keys.member("c"), keys.member("e")]
    assert [x.login for _, x in feed.ready] == ["a", "b", "d"]


def full_listing() -> OwnerListing:
    """A listing with every field of OwnerListing set to something other than its default."""
    rejected = {"name": "../up", "clone_url": "x"}
    foreign = {**GOOD, "name": "far", "clone_url": "https://evil.example/octo/far.git",
               "latest_release": "v1"}
    listing = OwnerListing(
        "octo", ListingOutcome.NOT_MODIFIED,
        tuple(RepoInfo.from_rest(e, HOST) for e in (GOOD, rejected, foreign)),
        ('W/"etag-1"', '"etag-2"'), "the error",
        read_gists([{"id": "aa5495c4624ad0bf", "updated_at": "2026-01-02T03:04:05Z",
                     "description": "notes"}, {"id": "../not-hex"}]))
    unset = [f.name for f in fields(OwnerListing)
             if getattr(listing, f.name) == getattr(OwnerListing("x", ListingOutcome.LISTED),
                                                    f.name)]
    assert unset == [], f"full_listing sets no value for {unset}: give it one"
    return listing


def test_a_listing_goes_through_json_with_every_field() -> None:
    """OwnerListing.to_json/from_json (a listing handed over between workers) carry every
    field: a new field of OwnerListing fails here until it has a codec in forge/listing.py."""
    listing = full_listing()
    doc = listing.to_json()
    assert doc is not None, "a field of OwnerListing has no codec in listing._CODECS"
    assert set(doc) == {f.name for f in fields(OwnerListing)}
    back = OwnerListing.from_json(orjson.loads(orjson.dumps(doc)), HOST)
    assert back == listing
    assert back.stored == listing.stored  # the entries as listed, for the user's object
    assert isinstance(back.repos[1], RejectedRepo)
    assert isinstance(back.repos[2], RepoInfo) and back.repos[2].clone_refusal  # re-checked


@pytest.mark.parametrize("doc", [
    None, [], "octo", {},
    {"login": "octo", "outcome": "listed", "repos": [], "etags": []},  # a field missing
    {"login": "octo", "outcome": "listed", "repos": [], "etags": [], "error": "", "gists": None,
     "more": 1},
    {"login": "../x", "outcome": "listed", "repos": [], "etags": [], "error": "", "gists": None},
    {"login": "octo", "outcome": "bogus", "repos": [], "etags": [], "error": "", "gists": None},
    {"login": "octo", "outcome": "listed", "repos": ["not an object"], "etags": [],
     "error": "", "gists": None},
    {"login": "octo", "outcome": "listed", "repos": {}, "etags": [], "error": "", "gists": None},
    {"login": "octo", "outcome": "listed", "repos": [], "etags": [1], "error": "", "gists": None},
    {"login": "octo", "outcome": "listed", "repos": [], "etags": [], "error": None, "gists": None},
    {"login": "octo", "outcome": "listed", "repos": [], "etags": [], "error": "",
     "gists": ["not an object"]},
])
def test_a_malformed_listing_is_refused(doc: object) -> None:
    with pytest.raises(ValueError, match="not a listing"):
        OwnerListing.from_json(doc, HOST)
