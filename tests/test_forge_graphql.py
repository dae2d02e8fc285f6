"""The stand-in's GraphQL side: GitHub's schema, GitHub's points, GitHub's errors."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from graphql import parse, validate

from bulkbackup.forge.github_graphql_query import build_query
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec


def post(forge: Forge, query: str, variables: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(forge.url + "/graphql", data=body, method="POST")
    if token:
        req.add_header("Authorization", f"bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def owners_query(n: int, first: int = 100) -> str:
    parts = " ".join(f'u{i}: repositoryOwner(login: "user{i:04d}") {{ login '
                     f"repositories(first: {first}, ownerAffiliations: OWNER) "
                     f"{{ nodes {{ name }} pageInfo {{ hasNextPage endCursor }} }} }}"
                     for i in range(n))
    return f"{{ rateLimit {{ cost remaining resetAt nodeCount }} {parts} }}"


@pytest.fixture
def populated(forge: Forge) -> Forge:
    # Listed without git repositories behind them: listing tests need no clones.
    forge.add_users({f"user{i:04d}": [RepoSpec(f"r{j}", missing=True) for j in range(i % 3)]
                     for i in range(260)})
    return forge


def test_the_clients_query_is_valid_against_githubs_schema() -> None:
    query, _ = build_query([("alice", None), ("bob", "Y3Vyc29yOnYyOjk5")])
    assert validate(forge_graphql.schema(), parse(query)) == []


@pytest.mark.parametrize("query", [
    # a misspelled field, a misspelled argument, a misspelled root field, a wrong enum value
    '{ repositoryOwner(login: "a") { repositories(first: 1) { nodes { nam } } } }',
    '{ repositoryOwner(login: "a") { repositories(first: 1, ownerAffiliation: OWNER) '
    "{ totalCount } } }",
    '{ repositoryOwnr(login: "a") { login } }',
    '{ repositoryOwner(login: "a") { repositories(first: 1, ownerAffiliations: OWNERS) '
    "{ totalCount } } }",
    # a field that exists on github.com's Repository but not on the RepositoryOwner interface
    '{ repositoryOwner(login: "a") { isFork } }',
])
def test_a_query_that_fails_on_github_fails_here_and_costs_nothing(
        populated: Forge, query: str) -> None:
    status, _, body = post(populated, query)
    assert status == 200
    assert body["errors"] and "data" not in body
    assert forge_graphql.controls(populated).counters["points"] == 0


@pytest.mark.parametrize(("owners", "points"), [(1, 1), (49, 1), (100, 1), (149, 1),
                                                 (150, 2), (250, 3)])
def test_points_are_connection_requests_over_100_rounded_at_least_1(
        populated: Forge, owners: int, points: int) -> None:
    status, headers, body = post(populated, owners_query(owners))
    assert status == 200 and "errors" not in body
    rate = body["data"]["rateLimit"]
    assert rate["cost"] == points
    assert rate["nodeCount"] == owners * 100
    assert int(headers["X-RateLimit-Remaining"]) == rate["remaining"] == 5000 - points
    assert headers["X-RateLimit-Resource"] == "graphql"
    assert forge_graphql.controls(populated).counters["points"] == points


def test_nested_connections_multiply_as_githubs_rule_says(populated: Forge) -> None:
    # 1 request for `repositories`, then one `repositories` of each of the 50 owners:
    # 51 requests -> 1 point; with first: 100 outside, 101 requests -> 1; 10 x 100 -> 2.
    def nested(outer: int, aliases: int) -> str:
        inner = "owner { repositories(first: 5) { totalCount } }"
        parts = " ".join(f'u{i}: repositoryOwner(login: "user0001") {{ repositories('
                         f"first: {outer}) {{ nodes {{ {inner} }} }} }}" for i in range(aliases))
        return f"{{ rateLimit {{ cost }} {parts} }}"

    assert post(populated, nested(50, 1))[2]["data"]["rateLimit"]["cost"] == 1
    assert post(populated, nested(100, 1))[2]["data"]["rateLimit"]["cost"] == 1
    assert post(populated, nested(100, 2))[2]["data"]["rateLimit"]["cost"] == 2


@pytest.mark.parametrize("args", ["", "first: 101", "last: 500"])
def test_connections_need_first_or_last_up_to_100(populated: Forge, args: str) -> None:
    field = f"repositories({args})" if args else "repositories"
    status, _, body = post(populated, f'{{ repositoryOwner(login: "user0001") '
                                      f"{{ {field} {{ totalCount }} }} }}")
    assert status == 200 and "data" not in body
    assert body["errors"][0]["type"] == "MISSING_PAGINATION_BOUNDARIES"


def test_unknown_login_is_null_with_not_found_for_its_alias_only(populated: Forge) -> None:
    query = ('{ u0: repositoryOwner(login: "user0002") { login } '
             'u1: repositoryOwner(login: "nobody-here") { login } '
             'u2: repositoryOwner(login: "user0005") { login } }')
    status, _, body = post(populated, query)
    assert status == 200
    assert body["data"] == {"u0": {"login": "user0002"}, "u1": None, "u2": {"login": "user0005"}}
    [error] = body["errors"]
    assert error["type"] == "NOT_FOUND" and error["path"] == ["u1"]
    assert "nobody-here" in error["message"]


def test_users_and_organizations(populated: Forge) -> None:
    populated.add_user("acme", [RepoSpec("tool", missing=True)])
    forge_graphql.controls(populated).organizations.add("acme")
    query = ('{ a: repositoryOwner(login: "acme") { __typename login } '
             'b: repositoryOwner(login: "user0001") { __typename } '
             'c: organization(login: "acme") { login } d: user(login: "acme") { login } }')
    _, _, body = post(populated, query)
    assert body["data"]["a"] == {"__typename": "Organization", "login": "acme"}
    assert body["data"]["b"] == {"__typename": "User"}
    assert body["data"]["c"] == {"login": "acme"} and body["data"]["d"] is None
    assert [e["type"] for e in body["errors"]] == ["NOT_FOUND"]


def test_cursor_pagination_and_filters(forge: Forge) -> None:
    forge.add_user("many", [RepoSpec(f"r{j:03d}", missing=True, fork=j % 2 == 1)
                            for j in range(7)])
    seen, cursor = [], None
    while True:
        after = f', after: "{cursor}"' if cursor else ""
        _, _, body = post(forge, f'{{ repositoryOwner(login: "many") {{ repositories('
                                 f"first: 3{after}) {{ nodes {{ name }} totalCount pageInfo "
                                 f"{{ hasNextPage endCursor }} }} }} }}")
        conn = body["data"]["repositoryOwner"]["repositories"]
        seen += [n["name"] for n in conn["nodes"]]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        cursor = conn["pageInfo"]["endCursor"]
    assert seen == [f"r{j:03d}" for j in range(7)]
    _, _, body = post(forge, '{ repositoryOwner(login: "many") { repositories(first: 10, '
                             "isFork: false, orderBy: {field: NAME, direction: DESC}) "
                             "{ nodes { name } } } }")
    names = [n["name"] for n in body["data"]["repositoryOwner"]["repositories"]["nodes"]]
    assert names == ["r006", "r004", "r002", "r000"]
    _, _, body = post(forge, '{ repositoryOwner(login: "many") { repositories(first: 10, '
                             "ownerAffiliations: COLLABORATOR) { totalCount } } }")
    assert body["data"]["repositoryOwner"]["repositories"]["totalCount"] == 0


def test_rate_limited_answers_200_with_a_rate_limited_error(populated: Forge) -> None:
    c = forge_graphql.controls(populated)
    with populated.lock:
        c.rate_limited, c.limit_reset = 1, time.time() + 30
    status, headers, body = post(populated, owners_query(2))
    assert status == 200 and body["errors"][0]["type"] == "RATE_LIMITED"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) >= time.time() + 25
    assert c.counters["points"] == 0
    assert "errors" not in post(populated, owners_query(2))[2]  # the switch was for 1 query


def test_token_budget_in_points(populated: Forge) -> None:
    c = forge_graphql.controls(populated)
    with populated.lock:
        c.set_token_budget("tok-small", 3, 60)
    costs = [post(populated, owners_query(150), token="tok-small") for _ in range(2)]
    assert [h["X-RateLimit-Remaining"] for _, h, _ in costs] == ["1", "1"]
    assert costs[1][2]["errors"][0]["type"] == "RATE_LIMITED"  # 2 points asked, 1 left
    _, headers, body = post(populated, owners_query(1), token="tok-small")
    assert "errors" not in body and headers["X-RateLimit-Remaining"] == "0"


def test_secondary_limit_is_403_with_retry_after(populated: Forge) -> None:
    c = forge_graphql.controls(populated)
    with populated.lock:
        c.secondary, c.retry_after_s = 1, 7
    status, headers, body = post(populated, owners_query(1))
    assert status == 403 and headers["Retry-After"] == "7"
    assert "secondary rate limit" in body["message"]


@pytest.mark.parametrize("oversize", [o for o in forge_graphql.Oversize
                                      if o is not forge_graphql.Oversize.STALL])
def test_batches_above_max_batch_are_refused(populated: Forge,
                                             oversize: forge_graphql.Oversize) -> None:
    c = forge_graphql.controls(populated)
    with populated.lock:
        c.max_batch, c.oversize = 10, oversize
    assert "errors" not in post(populated, owners_query(10))[2]
    status, _, body = post(populated, owners_query(11))
    assert status == oversize.value
    if oversize is forge_graphql.Oversize.RESOURCE_LIMITS:
        assert body["errors"][0]["type"] == "RESOURCE_LIMITS_EXCEEDED"
    assert c.counters["oversize"] == 1 and c.counters["points"] == 1
