"""A big owner's repositories read from both ends (forge/graphql_paging.py): over HTTP against
the stand-in, and the proofs that the two chains met, page by page, with answers that lie."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bulkbackup.config import GitHubSettings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.github_graphql_query import Ask, End
from bulkbackup.forge.graphql_paging import OwnerPages
from bulkbackup.forge.listing import ListingOutcome
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.test_graphql import rest_listing, settings

SIZES = {"huge": 1234, "thousand": 1000, "two-pages": 150, "three-pages": 201, "small": 3}


@pytest.fixture
def lister(forge: Forge, r: redis.Redis) -> Iterator[GraphQLLister]:
    forge.add_users({login: [RepoSpec(f"r{j}", missing=True) for j in range(n)]
                     for login, n in SIZES.items()})
    s = settings(forge)
    out = GraphQLLister(s, QuotaBroker(r, s.tokens))
    yield out
    out.close()


def test_big_owners_are_read_from_both_ends_in_half_the_queries(
        forge: Forge, lister: GraphQLLister) -> None:
    got = lister.list_owners(list(SIZES))
    for login in SIZES:
        assert got[login].outcome is ListingOutcome.LISTED, got[login].error
        # Every repository once, oldest first: as REST lists them.
        assert [r["name"] for r in got[login].stored] == [e["name"] for e in rest_listing(forge,
                                                                                     login)]
    # 1 234 repositories are 13 pages one after the other; from both ends: the first page,
    # then two a query (100 + 6 x 200 >= 1 234), so 7 queries carry everything.
    assert lister.stats.queries == 7
    queries = forge_graphql.controls(forge).queries
    pages = sum(q.count("repositoryOwner(") for q in queries)
    alone = sum(-(-n // 100) or 1 for n in SIZES.values())  # each owner's pages, one chain
    assert alone <= pages <= alone + 2  # at most one page read twice per big owner
    assert lister.stats.points == 7


def test_an_owner_of_two_pages_is_not_read_from_the_back(
        forge: Forge, lister: GraphQLLister) -> None:
    lister.list_owners(["two-pages"])
    assert lister.stats.queries == 2
    assert "direction: DESC" not in "".join(forge_graphql.controls(forge).queries)


# The proofs, page by page. Repositories as the lister stores them (REST names).

def repo(i: int, created: str | None = None) -> dict[str, Any]:
    return {"id": i, "name": f"r{i}",
            "created_at": created or f"2020-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z"}


def page(ids: range) -> list[dict[str, Any]]:
    return [repo(i) for i in ids]


S = GitHubSettings(max_pages=50)


def test_the_order_proves_the_chains_met_when_the_count_lies_high() -> None:
    owner = OwnerPages("o")  # 400 repositories, said to be 10 000
    owner.add_page(End.FRONT, page(range(0, 100)), True, "f1", 10_000)
    assert owner.next_asks(S) == [Ask("o", "f1"), Ask("o", None, End.BACK)]
    owner.add_page(End.FRONT, page(range(100, 200)), True, "f2", 10_000)
    owner.add_page(End.BACK, page(range(399, 299, -1)), True, "b1", 10_000)
    assert not owner.complete()  # front ends at r199, back at r300: not past each other
    assert owner.next_asks(S) == [Ask("o", "f2"), Ask("o", "b1", End.BACK)]
    owner.add_page(End.FRONT, page(range(200, 300)), True, "f3", 10_000)
    owner.add_page(End.BACK, page(range(299, 199, -1)), True, "b2", 10_000)
    assert owner.complete() and owner.next_asks(S) == []  # r299 is after r200
    assert [r["id"] for r in owner.repos()] == list(range(400))


def test_both_chains_are_asked_until_they_pass_each_other() -> None:
    owner = OwnerPages("o")
    owner.add_page(End.FRONT, page(range(0, 100)), True, "f1", 350)
    owner.next_asks(S)
    owner.add_page(End.FRONT, page(range(100, 200)), True, "f2", 350)
    owner.add_page(End.BACK, page(range(349, 249, -1)), True, "b1", 350)
    # 50 left, and the count says so; but only pages that overlap prove it (a repository
    # deleted meanwhile would make the count hide one not read).
    assert not owner.complete()
    assert owner.next_asks(S) == [Ask("o", "f2"), Ask("o", "b1", End.BACK)]
    owner.add_page(End.FRONT, page(range(200, 300)), True, "f3", 350)
    owner.add_page(End.BACK, page(range(249, 149, -1)), True, "b2", 350)
    assert owner.complete() and owner.next_asks(S) == []
    assert [r["id"] for r in owner.repos()] == list(range(350))


@pytest.mark.parametrize("total", [350, 10_000])
def test_equal_times_prove_nothing_but_the_count_may(total: int) -> None:
    same = "2020-01-01T00:00:00Z"
    owner = OwnerPages("o")  # 350 repositories created in the same second
    owner.add_page(End.FRONT, [repo(i, same) for i in range(100)], True, "f1", total)
    owner.next_asks(S)
    owner.add_page(End.FRONT, [repo(i, same) for i in range(100, 200)], True, "f2", total)
    owner.add_page(End.BACK, [repo(i, same) for i in range(349, 249, -1)], True, "b1", total)
    owner.next_asks(S)
    owner.add_page(End.FRONT, [repo(i, same) for i in range(200, 300)], True, "f3", total)
    owner.add_page(End.BACK, [repo(i, same) for i in range(249, 149, -1)], True, "b2", total)
    if total == 350:  # r299 and r150 share a time: the count decides
        assert owner.complete()
    else:  # it says more are left; the back brought nothing new: the front goes on alone
        assert not owner.complete() and owner.next_asks(S) == [Ask("o", "f3")]
        owner.add_page(End.FRONT, [repo(i, same) for i in range(300, 350)], False, None, total)
    assert owner.next_asks(S) == [] and [r["id"] for r in owner.repos()] == list(range(350))


@pytest.mark.parametrize("bad", ["unordered", "direction ignored", "bad time"])
def test_a_back_chain_that_proves_nothing_stops_and_the_front_reads_to_its_end(
        bad: str) -> None:
    owner = OwnerPages("o")
    owner.add_page(End.FRONT, page(range(0, 100)), True, "f1", 400)
    owner.next_asks(S)
    back = {"unordered": page(range(300, 400)),  # ascending where descending was asked
            "direction ignored": page(range(0, 100)),  # the front's first page again
            "bad time": [repo(i, "yesterday") for i in range(399, 299, -1)]}[bad]
    owner.add_page(End.FRONT, page(range(100, 200)), True, "f2", 400)
    owner.add_page(End.BACK, back, True, "b1", 400)
    asks = owner.next_asks(S)
    while asks:
        assert asks == [Ask("o", asks[0].cursor)]  # the front alone
        n = int(str(asks[0].cursor)[1:])
        owner.add_page(End.FRONT, page(range(n * 100, n * 100 + 100)), n < 3, f"f{n + 1}", 400)
        asks = owner.next_asks(S)
    assert owner.outcome is ListingOutcome.LISTED
    assert sorted(r["id"] for r in owner.repos()) == list(range(400))


def test_bounds_hold_over_both_chains() -> None:
    owner = OwnerPages("o")  # the same cursor string on both chains is no loop
    owner.add_page(End.FRONT, page(range(0, 100)), True, "c1", 1000)
    owner.next_asks(S)
    owner.add_page(End.FRONT, page(range(100, 200)), True, "c2", 1000)
    owner.add_page(End.BACK, page(range(999, 899, -1)), True, "c1", 1000)
    assert owner.next_asks(S) == [Ask("o", "c2"), Ask("o", "c1", End.BACK)]
    owner.add_page(End.FRONT, page(range(200, 300)), True, "c2", 1000)  # given again
    owner.add_page(End.BACK, page(range(899, 799, -1)), True, "c3", 1000)
    assert owner.next_asks(S) == [] and owner.outcome is ListingOutcome.FAILED
    assert "pagination loops" in owner.error
    few = OwnerPages("o")
    few.add_page(End.FRONT, page(range(0, 100)), True, "f1", 1000)
    assert few.next_asks(GitHubSettings(max_pages=2)) == []
    assert "more than 2 pages" in few.error
