"""Unit tests of the pure rules (issue 21, the test pyramid): no subprocess, no server.

Each test states a property the rule's docstring or its callers rely on: the chain rules
(archive/chains.py), the retention (history.plan_prune), the Error cut to fit the store's
metadata limit (metadata.fitted), the claim batch size
(run/batching.py), the GraphQL feed's claims (forge/listing_feed.py), the Range parser
(web/downloads.py).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkbackup.archive import chains, layout
from bulkbackup.archive.history import plan_prune
from bulkbackup.archive.metadata import (
    CHAIN,
    CHAIN_BYTES,
    CUT_MARK,
    ERROR,
    INCREMENTS,
    KEPT_SINCE,
    LAST_SYNC,
    fitted,
)
from bulkbackup.config import GitHubSettings, RunSettings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.listing_feed import ListingFeed
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.queue import keys
from bulkbackup.run.batching import BatchSizer
from bulkbackup.store import Head
from bulkbackup.store.base import (
    METADATA_LIMIT_BYTES,
    clean_metadata,
    clean_value,
    metadata_bytes,
)
from bulkbackup.web.downloads import ByteRange, Unsatisfiable, parse_range

FAST = hypothesis.settings(max_examples=150, deadline=None)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
DAY_US = 86_400 * 10**6


def head(size: int = 1000, /, **meta: str) -> Head:
    return Head(size, EPOCH, {k.lower(): v for k, v in meta.items()})


def at(offset_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=offset_us)


# -- chains: next_step, committed, chain_bytes ---------------------------------------------

@FAST
@given(st.integers(1, 10**9), st.integers(0, 20), st.lists(st.integers(1, 10**9), max_size=30))
def test_a_chain_stays_short_and_small(size: int, max_increments: int, sizes: list[int]) -> None:
    """Increments on one base stop (a full bundle again) after run.max_increments, and once
    the committed ones add up to more than half the base: a restore downloads at most the
    base, half of it, and the last increment."""
    run = RunSettings(max_increments=max_increments)
    n = chain_b = 0
    for inc in sizes:
        base = head(size, **{CHAIN: layout.chain_id(EPOCH), INCREMENTS: str(n),
                             CHAIN_BYTES: str(chain_b)})
        assert (chains.committed(base), chains.chain_bytes(base)) == (n, chain_b)
        if chains.next_step(base, run) is chains.Step.FULL:
            assert n >= max_increments or 2 * chain_b > size
            break
        assert n < max_increments and 2 * chain_b <= size
        n, chain_b = n + 1, chain_b + inc
    assert n <= max_increments


def test_full_without_increments_or_data() -> None:
    assert chains.next_step(head(1000), RunSettings(max_increments=0)) is chains.Step.FULL
    assert chains.next_step(head(0), RunSettings()) is chains.Step.FULL  # nothing to build on
    assert chains.next_step(head(1000), RunSettings()) is chains.Step.INCREMENT


# Metadata read from the store is untrusted: damage is reported, never raised.
DAMAGED = ["x", "-1", "1e3", " 12", "²", "١٢", "1" * 30, "9" * 5000]


@pytest.mark.parametrize("text", DAMAGED, ids=lambda t: f"{t[:4]!r}x{len(t)}")
def test_damaged_increments_mean_a_full_bundle(text: str) -> None:
    base = head(**{INCREMENTS: text})
    assert chains.increments_damage(base) != ""
    assert chains.committed(base) == 0
    assert chains.next_step(base, RunSettings()) is chains.Step.FULL


@pytest.mark.parametrize("text", DAMAGED, ids=lambda t: f"{t[:4]!r}x{len(t)}")
def test_damaged_chain_bytes_is_not_a_count(text: str) -> None:
    base = head(**{INCREMENTS: "1", CHAIN_BYTES: text})
    assert chains.chain_bytes(base) == 0
    chains.next_step(base, RunSettings())  # decided, not raised


@FAST
@given(st.text(max_size=40))
def test_increments_damage_reads_only_counts(text: str) -> None:
    base = head(**{INCREMENTS: text})
    assert 0 <= chains.committed(base) <= chains.MAX_COMMITTED
    counted = text.isascii() and text.isdigit() and int(text) <= chains.MAX_COMMITTED
    assert (chains.increments_damage(base) == "") == (not text or counted)


# -- chains: chain_of, new_chain -------------------------------------------------------------

def test_chain_of_a_base_from_before_increments_is_its_last_sync() -> None:
    legacy = head(**{LAST_SYNC: "2026-02-03T04:05:06Z"})
    assert chains.chain_of(legacy) == "20260203T040506000000Z" == chains.chain_of(legacy)
    assert chains.chain_of(head(**{CHAIN: "garbage"})) == layout.chain_id(EPOCH)  # mtime
    assert chains.chain_of(head(**{CHAIN: "20260101T000000000001Z"})) == "20260101T000000000001Z"


@FAST
@given(st.integers(-DAY_US, DAY_US), st.integers(-DAY_US, DAY_US), st.booleans())
def test_new_chain_sorts_after_the_one_it_replaces(old_us: int, now_us: int,
                                                    legacy: bool) -> None:
    """Even when this host's clock is behind the writer's: ids order `restore --at`."""
    meta = {LAST_SYNC: at(old_us).isoformat()} if legacy else {CHAIN: layout.chain_id(at(old_us))}
    old = head(**meta)
    new = chains.new_chain(old, at(now_us))
    assert layout.chain_time(new) is not None
    assert new > chains.chain_of(old)
    if now_us > old_us:
        assert new == layout.chain_id(at(now_us))  # a clock ahead: its own time


def test_new_chain_without_an_archive_is_now() -> None:
    now = at(5)
    assert chains.new_chain(None, now) == layout.chain_id(now)
    failed = head(0, **{CHAIN: layout.chain_id(at(DAY_US))})  # no data, not an emptied repo
    assert chains.new_chain(failed, now) == layout.chain_id(now)


# -- retention: expired, plan_prune, may_expire ---------------------------------------------

# A repository's parts: chains at distinct times (offsets in days, with microseconds),
# each kept as history (part 0) or not (increments only, its base replaced without history).
chain_sets = st.dictionaries(st.integers(0, 400 * DAY_US), st.tuples(st.booleans(),
                                                                     st.integers(0, 3)),
                             max_size=8)


def build(spec: dict[int, tuple[bool, int]]) -> chains.StoredParts:
    parts = chains.StoredParts()
    for offset, (kept, increments) in spec.items():
        chain = layout.chain_id(at(offset))
        for seq in range(0 if kept else 1, increments + 1 if kept else increments + 2):
            parts.add(chain, seq, 100 + seq)
    return parts


def successor(parts: chains.StoredParts, current: str, chain: str) -> datetime | None:
    later = sorted(c for c in set(parts.chains) | {current} if c > chain)
    return layout.chain_time(later[0]) if later else None


retention = dict(spec=chain_sets, current_us=st.integers(0, 420 * DAY_US),
                 now_days=st.integers(0, 900), keep_days=st.integers(0, 400))


@FAST
@given(**retention)
def test_plan_prune_deletes_only_what_no_restore_within_the_retention_needs(
        spec: dict[int, tuple[bool, int]], current_us: int, now_days: int,
        keep_days: int) -> None:
    parts = build(spec)
    current = layout.chain_id(at(current_us))
    now = at(max(now_days * DAY_US, current_us))
    limit = now - timedelta(days=keep_days)
    doomed, since = plan_prune(parts, current, now, keep_days)
    assert current not in doomed and set(doomed) <= set(parts.chains)
    for chain in parts.chains:
        if chain == current:
            continue
        kept = 0 in parts.chains[chain]
        nxt = successor(parts, current, chain)
        # A kept chain serves `restore --at` until the next base: it stays while that
        # next base is within the retention (or there is none).
        needed = kept and keep_days > 0 and (nxt is None or nxt > limit)
        assert (chain in doomed) == (not needed), (chain, kept, nxt, limit)
    left = [c for c in parts.kept() if c not in doomed and c != current]
    assert since == min(left, default="")  # KeptSince: the oldest kept chain left
    assert since not in doomed
    if keep_days == 0:
        assert since == "" and set(doomed) == set(parts.chains) - {current}


@FAST
@given(**retention, later_days=st.integers(0, 800))
def test_kept_since_tells_when_a_listing_is_needed(
        spec: dict[int, tuple[bool, int]], current_us: int, now_days: int, keep_days: int,
        later_days: int) -> None:
    """After a prune, `may_expire` on the recorded KeptSince is false only while nothing
    has expired: unchanged repositories skip the listing, and nothing is kept too long."""
    parts = build(spec)
    current = layout.chain_id(at(current_us))
    now = at(max(now_days * DAY_US, current_us))
    doomed, since = plan_prune(parts, current, now, keep_days)
    for chain in doomed:
        del parts.chains[chain]
    assert plan_prune(parts, current, now, keep_days) == ([], since)  # idempotent
    later = now + timedelta(days=later_days)
    base = head(**({KEPT_SINCE: since} if since else {}))
    if not chains.may_expire(base, later, keep_days):
        assert chains.expired(parts, current, later, keep_days) == []


@FAST
@given(st.integers(-DAY_US * 800, DAY_US * 800), st.integers(0, 400), st.integers(0, 10**9))
def test_may_expire_once_true_stays_true(since_us: int, keep_days: int, more_us: int) -> None:
    base = head(**{KEPT_SINCE: layout.chain_id(at(since_us))})
    if chains.may_expire(base, EPOCH, keep_days):
        assert chains.may_expire(base, EPOCH + timedelta(microseconds=more_us), keep_days)


def test_may_expire_needs_a_kept_since() -> None:
    far = EPOCH + timedelta(days=10_000)
    assert not chains.may_expire(head(), far, 1)
    assert not chains.may_expire(head(**{KEPT_SINCE: "garbage"}), far, 1)
    assert chains.may_expire(head(**{KEPT_SINCE: layout.chain_id(EPOCH)}), far, 1)


# -- BatchSizer -----------------------------------------------------------------------------

sizers = dict(target_s=st.floats(0.1, 86_400), batch_max=st.integers(1, 10_000),
              procs=st.integers(1, 64),
              seconds=st.lists(st.floats(0, 1e5), max_size=6),
              remaining=st.none() | st.integers(0, 10**7))


def sizer_after(target_s: float, batch_max: int, procs: int, seconds: list[float]
                ) -> BatchSizer:
    sizer = BatchSizer(target_s, batch_max, procs)
    for s in seconds:
        sizer.observe(s)
    return sizer


@FAST
@given(**sizers)
def test_batch_size_bounds(target_s: float, batch_max: int, procs: int, seconds: list[float],
                           remaining: int | None) -> None:
    """At least 1, at most run.claim_batch_max, and never more than a 1/(2 x procs) share
    of the users still due (but 1 when fewer are due: a worker always makes progress)."""
    n = sizer_after(target_s, batch_max, procs, seconds).size(remaining)
    assert 1 <= n <= batch_max
    if remaining is not None:
        assert n <= max(1, math.ceil(remaining / (2 * procs)))
    if not seconds and remaining is None:
        assert n == min(4, batch_max)  # before any measure: a small first claim


@FAST
@given(**sizers, slower=st.floats(0, 1e5), faster=st.floats(0, 1e5))
def test_slower_users_never_grow_the_batch(target_s: float, batch_max: int, procs: int,
                                           seconds: list[float], remaining: int | None,
                                           slower: float, faster: float) -> None:
    faster, slower = sorted((faster, slower))
    fast = sizer_after(target_s, batch_max, procs, [*seconds, faster])
    slow = sizer_after(target_s, batch_max, procs, [*seconds, slower])
    assert slow.size(remaining) <= fast.size(remaining)


@pytest.mark.parametrize(("s_per_user", "expected"), [(1.0, 5), (0.5, 10), (10.0, 1),
                                                      (0.0, 32), (0.001, 32)])
def test_a_batch_holds_about_target_seconds(s_per_user: float, expected: int) -> None:
    sizer = BatchSizer(5.0, 32, 2)
    sizer.observe(s_per_user)
    assert sizer.size(None) == expected


# -- ListingFeed.wanted ---------------------------------------------------------------------

def feed_of(batch: int) -> ListingFeed:
    # No request is sent: submit() only queues owners (QuotaBroker(None): this process's quota).
    return ListingFeed(GraphQLLister(GitHubSettings(graphql_batch=batch), QuotaBroker(None, ())),
                       batch)


@FAST
@given(batch=st.integers(1, 100), claim_max=st.integers(1, 64), procs=st.integers(1, 8),
       due=st.integers(0, 3000), first=st.integers(1, 4), listing=st.integers(0, 150))
def test_claims_fill_one_query_within_the_share(batch: int, claim_max: int, procs: int,
                                                due: int, first: int, listing: int) -> None:
    """The worker's `_fill` loop: claims until the next query is full, each claim at most
    run.claim_batch_max, the users held not past the batch rule's share of those due, the
    first claim at most `first`; it ends, and an idle feed claims when users are due."""
    feed = feed_of(batch)
    feed.add([keys.member(f"held{i}") for i in range(min(listing, batch))])  # from before
    held = feed.listing
    remaining: int | None = None
    claims = 0
    while (want := feed.wanted(remaining, first, procs, claim_max)) > 0:
        assert want <= claim_max and feed.queued + want <= batch
        if remaining is None:
            assert want <= first
        else:
            assert feed.listing + want <= max(1, math.ceil(remaining / (2 * procs)))
        got = min(want, due)
        if got == 0:
            break
        feed.add([keys.member(f"u{due - i}") for i in range(got)])
        due -= got
        remaining = due
        claims += 1
        assert claims <= batch  # each claim adds at least one page to a bounded query
    assert feed.queued <= batch
    if held == 0 and due > 0:
        assert claims > 0 or feed.wanted(remaining, first, procs, claim_max) > 0
    feed.lister.close()


def test_wanted_counts_the_users_still_listing() -> None:
    feed = feed_of(100)
    assert feed.wanted(1000, 4, 2, 32) == 32  # claim_max
    assert feed.wanted(40, 4, 2, 32) == 10  # ceil(40 / 4)
    feed.add([keys.member(f"u{i}") for i in range(7)])
    assert feed.wanted(40, 4, 2, 32) == 3  # the share holds those already claimed
    assert feed.wanted(None, 4, 2, 32) == 4  # before any claim: the rule's first size
    assert feed_of(5).wanted(1000, 4, 1, 32) == 5  # one query's pages
    feed.lister.close()


# -- Range ----------------------------------------------------------------------------------

sizes = st.integers(0, 10**12)
positions = st.integers(0, 10**13)


@FAST
@given(st.one_of(st.text(max_size=40), st.from_regex(r"bytes=[0-9]{0,25}-[0-9]{0,25}",
                                                     fullmatch=True)), sizes)
def test_a_satisfiable_range_lies_within_the_object(header: str, size: int) -> None:
    try:
        got = parse_range(header, size)
    except Unsatisfiable:
        return
    if got is not None:
        assert 0 <= got.start <= got.end < size and got.length >= 1


@FAST
@given(positions, positions, sizes)
def test_first_and_last(first: int, last: int, size: int) -> None:
    header = f"bytes={first}-{last}"
    if first >= size or last < first:
        with pytest.raises(Unsatisfiable):
            parse_range(header, size)
    else:
        assert parse_range(header, size) == ByteRange(first, min(last, size - 1))


@FAST
@given(positions, sizes)
def test_from_first_to_the_end(first: int, size: int) -> None:
    if first >= size:
        with pytest.raises(Unsatisfiable):
            parse_range(f"bytes={first}-", size)
    else:
        assert parse_range(f"bytes={first}-", size) == ByteRange(first, size - 1)


@FAST
@given(positions, sizes)
def test_the_last_n_bytes(n: int, size: int) -> None:
    if n == 0 or size == 0:
        with pytest.raises(Unsatisfiable):
            parse_range(f"bytes=-{n}", size)
    else:
        got = parse_range(f"bytes=-{n}", size)
        assert got == ByteRange(size - min(n, size), size - 1)


@FAST
@given(st.integers(10**19, 10**40), st.integers(1, 10**12), st.integers(0, 10**12))
def test_numbers_past_any_object(big: int, size: int, first: int) -> None:
    """20+ digits: a last position is the end, a suffix is all of it, a first position is
    past the end."""
    assert parse_range(f"bytes=-{big}", size) == ByteRange(0, size - 1)
    if first < size:
        assert parse_range(f"bytes={first}-{big}", size) == ByteRange(first, size - 1)
    with pytest.raises(Unsatisfiable):
        parse_range(f"bytes={big}-", size)


@pytest.mark.parametrize("header", [None, "", "bytes=-", "bytes=0-1,3-4", "items=0-1",
                                    "bytes 0-1", "bytes=a-b"])
def test_a_range_not_served_means_the_whole_object(header: str | None) -> None:
    assert parse_range(header, 100) is None


# -- metadata.fitted: an Error always fits the store -------------------------------------------

def cleaned_size(meta: dict[str, str]) -> int:
    """The size the store counts against its limit."""
    return metadata_bytes({k: clean_value(v) for k, v in meta.items()})


def long_text(max_repeats: int) -> st.SearchStrategy[str]:
    """Texts of any characters, up to hundreds of times longer than hypothesis' own."""
    return st.builds(lambda s, n: s * n, st.text(max_size=20), st.integers(0, max_repeats))


@FAST
@given(long_text(300), long_text(100))
def test_an_error_is_cut_to_fit_and_only_when_needed(error: str, other: str) -> None:
    """Whatever the Error's text (any characters, escaped by the store), the store takes it
    once fitted while the other values leave room; a cut one fills the limit exactly and
    ends in CUT_MARK; one that fits, and every other value, is not touched."""
    meta = {LAST_SYNC: "2026-01-01T00:00:00Z", "Other": other, ERROR: error}
    out = fitted(meta)
    assert {k: v for k, v in out.items() if k != ERROR} == {LAST_SYNC: meta[LAST_SYNC],
                                                            "Other": other}
    if cleaned_size(meta) <= METADATA_LIMIT_BYTES:
        assert out == meta
    elif cleaned_size({**meta, ERROR: ""}) + len(CUT_MARK) < METADATA_LIMIT_BYTES:
        cleaned = clean_metadata(out)  # never refused
        assert cleaned[ERROR].endswith(CUT_MARK)
        assert metadata_bytes(cleaned) == METADATA_LIMIT_BYTES
