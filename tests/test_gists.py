"""Gists end to end, on both stores: a real `bulkbackup sync` from the stand-in (GraphQL and
REST) archives a user's public gists as `<login>/gists/<id>.bundle` and the list as
`<login>/gists.json`; a push to a gist is an increment, an unchanged gist is not fetched;
`restore LOGIN` rebuilds `gists/<id>.git`; a gist that fails, or whose id is not hex, is
recorded without failing the user; run.gists off fetches nothing."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson
import pytest
from graphql import parse, validate

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR
from bulkbackup.config import GitHubSettings
from bulkbackup.forge.git_auth import gist_auth
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.github_graphql_query import (
    GIST_TURNS,
    build_query,
    connections,
    gist_owners,
    points_for,
)
from bulkbackup.forge.listing import MAX_GISTS, GistInfo, RejectedGist, read_gists
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.store import Store
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.forge_gists import FOLDER
from bulkbackup.testing.forge_graphql import controls
from tests.helpers import git, refs_of, run_cli, start_serve, stop_serve, sync, verify

GIST = "aa11bb22cc33dd44ee55ff6677889900"
OTHER = "0123456789abcdef0123"
FILES = {"snippet.py": b"print('gist')\n"}


def gist_refs(forge: Forge, gist_id: str) -> dict[str, str]:
    return refs_of(forge.git_root / FOLDER / f"{gist_id}.git")


@pytest.mark.parametrize("api", ["graphql", "rest"])
def test_a_gist_is_archived_restored_and_a_push_is_an_increment(
        env: None, forge: Forge, store: Store, tmp_path: Path, api: str) -> None:
    forge.add_user("gina", [RepoSpec("code")])
    forge.add_gist("gina", GIST, FILES)
    forge.add_gist("gina", OTHER, {"notes.md": b"# notes\n"})
    out = sync("gina", {"GITHUB_API": api})
    assert "gists 2 archived, 0 failed" in out, out
    head = store.head(layout.bundle_key("gina", layout.gist_name(GIST)))
    assert head is not None and head.size > 0 and not head.get(ERROR)
    listed = orjson.loads(store.read_bytes(layout.gists_key("gina")))
    assert sorted(g["id"] for g in listed) == sorted([GIST, OTHER])
    user = store.head("gina")
    assert user is not None and user.get("SyncdRepos") == "1" and user.get("Gists") == "2"

    # Unchanged: nothing fetched from the gists' host, nothing written to their bundles.
    forge.reset_counters()
    sync("gina", {"GITHUB_API": api})
    assert forge.clones(FOLDER, GIST) == 0 and forge.clones(FOLDER, OTHER) == 0
    assert store.head(layout.bundle_key("gina", layout.gist_name(GIST))) == head

    # A push: an increment on the gist's chain; the other gist is not fetched.
    forge.push_gist("gina", GIST, {"snippet.py": b"print('gist, again')\n"})
    out = sync("gina", {"GITHUB_API": api})
    assert "gists 1 archived" in out, out
    assert forge.clones(FOLDER, OTHER) == 0
    base = store.head(layout.bundle_key("gina", layout.gist_name(GIST)))
    assert base is not None and base.get("Increments") == "1"

    proc = run_cli("restore", "gina", "--to", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restored = tmp_path / "r" / "gina" / "gists" / f"{GIST}.git"
    assert refs_of(restored) == gist_refs(forge, GIST)
    assert git("show", "main:snippet.py", cwd=restored) == "print('gist, again')\n"
    assert (tmp_path / "r" / "gina" / "gists" / f"{OTHER}.git").is_dir()
    assert (tmp_path / "r" / "gina" / "code.git").is_dir()

    code, report = verify("gina")
    assert code == 0, report
    names = {r["name"]: r["result"] for u in report["users"] for r in u["repositories"]}
    assert names[f"gists/{GIST}"] == "verified"


def test_a_failing_gist_and_a_non_hex_id_are_recorded_without_failing_the_user(
        env: None, forge: Forge, store: Store) -> None:
    forge.add_user("gus", [RepoSpec("code")])
    forge.add_gist("gus", GIST, FILES)
    forge.add_gist("gus", OTHER, FILES, build=False)  # listed, its clone answers 404
    forge.add_gist("gus", "../../etc", FILES, build=False)  # not hex: never a key
    out = sync("gus")
    assert "gists 1 archived, 2 failed" in out, out
    repo = store.head(layout.bundle_key("gus", "code"))
    assert repo is not None and repo.size > 0 and not repo.get(ERROR)
    failed = store.head(layout.bundle_key("gus", layout.gist_name(OTHER)))
    assert failed is not None and failed.size == 0 and failed.get(ERROR)
    listed = store.head(layout.gists_key("gus"))
    assert listed is not None and "2 of 3 gists failed" in listed.get(ERROR)
    assert "invalid gist id" in listed.get(ERROR)
    user = store.head("gus")
    assert user is not None and not user.get(ERROR) and user.get("SyncdRepos") == "1"
    assert not [i.key for i in store.list("gus/") if "etc" in i.key]
    # The failed gist is fetched again next time (no 304 shortcut: no ETags kept).
    forge.reset_counters()
    sync("gus", {"GITHUB_API": "rest"})
    assert forge.clones(FOLDER, OTHER) == 1


def test_no_gists_costs_rest_one_request_and_graphql_no_store_request(
        env: None, forge: Forge, store: Store) -> None:
    """REST: a user without gists costs the one gist list (a 304 when unchanged: free) and no
    store request for gists; GraphQL asks them in the listing's query."""
    forge.add_user("nora", [RepoSpec("code")])
    sync("nora", {"GITHUB_API": "rest"})
    assert forge.counters["api_gists"] == 1
    assert store.head(layout.gists_key("nora")) is None
    user = store.head("nora")
    assert user is not None and user.get("Gists") == "0"
    forge.reset_counters()
    out = sync("nora", {"GITHUB_API": "rest"})
    assert "unchanged since the last sync (304)" in out, out
    assert forge.counters["api_gists"] == 1 and forge.counters["api_304"] == 2
    forge.reset_counters()
    sync("nora")  # GraphQL: the gists ride in the listing's one query
    assert forge.counters["api_gists"] == 0 and controls(forge).counters["requests"] == 1
    assert store.head(layout.gists_key("nora")) is None


def test_run_gists_off_fetches_nothing(env: None, forge: Forge, store: Store,
                                       tmp_path: Path) -> None:
    forge.add_user("otto", [RepoSpec("code")])
    forge.add_gist("otto", GIST, FILES)
    cfg = tmp_path / "off.yaml"
    cfg.write_text("run:\n  gists: false\n")
    for api in ("graphql", "rest"):
        out = sync("otto", {"GITHUB_API": api, "BULKBACKUP_CONFIG": str(cfg)})
        assert "gists" not in out, out
    assert forge.counters["api_gists"] == 0 and forge.clones(FOLDER, GIST) == 0
    assert not [i.key for i in store.list("otto/") if "gists" in i.key]


def test_a_gist_deleted_upstream_is_kept_and_the_list_follows(
        env: None, forge: Forge, store: Store) -> None:
    forge.add_user("dora", [RepoSpec("code")])
    forge.add_gist("dora", GIST, FILES)
    sync("dora")
    with forge.lock:
        forge.gists["dora"].clear()
    shutil.rmtree(forge.git_root / FOLDER / f"{GIST}.git")
    sync("dora")
    assert orjson.loads(store.read_bytes(layout.gists_key("dora"))) == []
    kept = store.head(layout.bundle_key("dora", layout.gist_name(GIST)))
    assert kept is not None and kept.size > 0


def test_show_stats_and_serve_list_and_count_the_gists(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("sue", [RepoSpec("code")])
    forge.add_gist("sue", GIST, FILES)
    sync("sue")
    forge.push_gist("sue", GIST, {"more.py": b"x = 1\n"})
    sync("sue")
    proc = run_cli("show", "sue", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = orjson.loads(proc.stdout)
    assert [(r["name"], r["gist_of"]) for r in shown["repositories"]] == [
        ("code", None), (f"gists/{GIST}", GIST)]
    assert shown["gists"] == 1 and shown["gists_error"] is None
    assert "gists 1" in run_cli("show", "sue").stdout
    proc = run_cli("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert report["repositories"]["archived"] == 1 and report["more_than_git"]["gists"] == 1
    served = start_serve(dict(os.environ), tmp_path / "serve.log")
    try:
        page = served.get("/users/sue").text
        assert f"/users/sue/gists/{GIST}.bundle" in page and "/users/sue/gists.json" in page
        got = served.get(f"/users/sue/gists/{GIST}.bundle")
        assert got.status_code == 200
        assert got.content == store.read_bytes(layout.bundle_key("sue", layout.gist_name(GIST)))
        base = store.head(layout.bundle_key("sue", layout.gist_name(GIST)))
        assert base is not None
        chain = base.get("Chain")
        part = served.get(f"/users/sue/gists/{GIST}.bundle.d/{chain}/000001.bundle")
        assert part.status_code == 200 and part.content.startswith(b"# v")
        listed = served.get("/users/sue/gists.json")
        assert listed.status_code == 200 and orjson.loads(listed.content)[0]["id"] == GIST
        assert served.get("/users/sue/gists/zz.bundle").status_code == 404
        metrics = served.get("/metrics").text
        assert 'bulkbackup_last_stats_more_than_git{kind="gists"} 1.0' in metrics
    finally:
        stop_serve(served)


def test_rest_asks_the_gist_list_with_its_etag_when_the_pages_changed(
        env: None, forge: Forge, store: Store) -> None:
    """A push to a repository changes the pages; the gist list answers 304 (free) and the
    gists are left as stored: no store read or write for them, no clone."""
    forge.add_user("rita", [RepoSpec("code")])
    forge.add_gist("rita", GIST, FILES)
    sync("rita", {"GITHUB_API": "rest"})
    listed = store.head(layout.gists_key("rita"))
    assert listed is not None
    forge.push("rita", "code", {"new.txt": b"new\n"})
    forge.reset_counters()
    out = sync("rita", {"GITHUB_API": "rest"})
    assert "1 archived" in out and "gists" not in out, out
    assert forge.counters["api_gists"] == 1 and forge.counters["api_304"] == 1
    assert forge.clones(FOLDER, GIST) == 0
    assert store.head(layout.gists_key("rita")) == listed
    user = store.head("rita")
    assert user is not None and user.get("Gists") == "1"
    assert any(e.startswith("gists:") for e in user.get("ListingETags").split())


def test_gist_keys_parse_and_nothing_else_is_a_gist() -> None:
    name = layout.gist_name(GIST)
    assert name == f"gists/{GIST}" and layout.gist_of(name) == GIST
    for key, kind in ((layout.bundle_key("u", name), layout.Kind.BUNDLE),
                      (layout.zip_key("u", name), layout.Kind.ZIP),
                      (layout.part_key("u", name, "20260101T000000000000Z", 2), layout.Kind.PART)):
        parsed = layout.parse_key(key)
        assert (parsed.login, parsed.repo, parsed.kind) == ("u", name, kind), key
    assert layout.parse_key(layout.gists_key("u")).kind is layout.Kind.GISTS
    assert layout.parse_key("u/gists.bundle").repo == "gists"  # a repository named gists
    for bad in ("u/gists/XYZ.bundle", "u/gists/a/b.bundle", "u/gists/..bundle"):
        assert layout.parse_key(bad).kind is layout.Kind.OTHER, bad
    for bad_id in ("../x", "ABC", "", "a" * 65, "g1"):
        with pytest.raises(ValueError):
            layout.gist_name(bad_id)


def test_a_listing_keeps_at_most_100_gists_and_refuses_ids_that_are_not_hex() -> None:
    got = read_gists([{"id": f"{i:x}", "updated_at": "2026-01-01T00:00:00Z"}
                      for i in range(150)])
    assert len(got) == MAX_GISTS and all(isinstance(g, GistInfo) for g in got)
    odd = read_gists([{"id": "../../etc"}, {"id": 12}, "not a dict", {"id": "ab", "x": 1}])
    assert [type(g) for g in odd] == [RejectedGist, RejectedGist, GistInfo]
    assert odd[2].rest == {"id": "ab", "node_id": None, "description": None, "public": None,
                           "html_url": None, "created_at": None, "updated_at": None,
                           "pushed_at": None}


def test_the_gist_query_is_githubs_schema_and_its_gists_cost_no_point() -> None:
    """Each gist connection is one more connection (GitHub's rule): a query asks as many as
    the rounding leaves free, the owners taking turns by day when not all fit."""
    items = [(f"user{i}", None) for i in range(60)] + [(f"big{i}", "Y3Vyc29y") for i in range(40)]
    every, every_vars = build_query(items, [login for login, _ in items])
    document = parse(every)
    assert validate(forge_graphql.schema(), document) == []
    cost = forge_graphql.query_cost(document, every_vars)
    assert cost.requests == connections(items, [x for x, _ in items]) == 160
    assert cost.points == points_for(160) == 2  # all 60 first pages' gists: one point more
    seen: set[str] = set()
    for day in range(20_000, 20_000 + GIST_TURNS):
        asked = gist_owners(items, day)
        assert len(asked) == 49 and all(x.startswith("user") for x in asked)
        query, variables = build_query(items, asked)
        cost = forge_graphql.query_cost(parse(query), variables)
        assert (cost.requests, cost.points) == (149, 1)  # what the query costs without
        seen |= asked
    assert len(seen) == 60  # every owner's gists within GIST_TURNS days
    small = [(f"user{i}", None) for i in range(25)]
    assert gist_owners(small, 0) == {x for x, _ in small}  # room for all: 50 connections
    plain, plain_vars = build_query(items)
    assert forge_graphql.query_cost(parse(plain), plain_vars).points == 1
    assert "gists" not in plain


def test_the_token_goes_to_the_gist_host_only() -> None:
    gh = GitHubSettings()
    assert gh.gist_base == "https://gist.github.com"
    auth = gist_auth(gh, "tok")
    assert auth.authorization("https://gist.github.com/x.git") is not None
    assert auth.authorization("https://github.com/x.git") is None
    assert auth.authorization("http://gist.github.com/x.git") is None
    ghe = GitHubSettings(api_url="https://ghe.example/api/v3")
    assert ghe.gist_base == "https://ghe.example/gist"
    assert GitHubSettings(gist_url="https://g.example/").gist_base == "https://g.example"


def test_a_graphql_query_of_100_owners_asks_49_gist_lists_and_costs_one_point(
        forge: Forge) -> None:
    logins = [f"owner{i:03d}" for i in range(100)]
    forge.add_users({login: [] for login in logins})
    forge.add_gist("owner007", GIST, FILES, build=False)
    settings = GitHubSettings(api_url=forge.url, tokens=("test-token-000000000001",))
    lister = GraphQLLister(settings, QuotaBroker(None, settings.tokens), gists=True)
    days = [int(time.time() // 86400)]
    try:
        got = lister.list_owners(logins)
    finally:
        lister.close()
    days.append(int(time.time() // 86400))  # the turn is the day's: either, past midnight
    counters = controls(forge).counters
    assert (counters["requests"], counters["points"], counters["connections"]) == (1, 1, 149)
    asked = {login for login, listing in got.items() if listing.gists is not None}
    assert asked in [gist_owners([(x, None) for x in logins], day) for day in days]
    assert len(asked) == 49
    if "owner007" in asked:
        assert [g.id for g in got["owner007"].gists or ()] == [GIST]
