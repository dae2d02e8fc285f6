"""Wikis end to end, on both stores: a real `bulkbackup sync` from the stand-in archives a
repository's wiki as `<repo>.wiki.bundle`, an edit as an increment, an unchanged wiki for one
ref listing, a missing one for one request; `restore LOGIN/REPO` rebuilds `REPO.wiki.git`;
verify checks it; a wiki that fails does not fail its repository."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR
from bulkbackup.errors import InvalidName
from bulkbackup.names import check_repo_name, is_archive_name
from bulkbackup.store import Store
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import git, refs_of, run_cli, start_serve, stop_serve, sync, verify

PAGES = {"Home.md": b"# Home\n\nThe wiki's first page.\n"}


def wiki_refs(forge: Forge, login: str, name: str) -> dict[str, str]:
    return refs_of(forge.git_root / login / f"{name}.wiki.git")


def test_a_wiki_is_archived_restored_and_an_edit_is_an_increment(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("wendy", [RepoSpec("docs", wiki=PAGES), RepoSpec("plain", has_wiki=True),
                             RepoSpec("nowiki")])
    out = sync("wendy")
    assert "wikis 1 archived, 0 failed" in out
    wiki = store.head(layout.bundle_key("wendy", "docs.wiki"))
    assert wiki is not None and wiki.size > 0 and not wiki.get(ERROR)
    # has_wiki without a wiki repository: one request (its 404), nothing stored.
    assert forge.clones("wendy", "plain.wiki") == 1
    assert forge.upload_packs("wendy", "plain.wiki") == 0
    assert store.head(layout.bundle_key("wendy", "plain.wiki")) is None
    assert forge.clones("wendy", "nowiki.wiki") == 0  # the listing says it has none
    # The user's object counts repositories only, and the stats pass agrees.
    user = store.head("wendy")
    assert user is not None and user.get("SyncdRepos") == "3"
    proc = run_cli("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert report["repositories"]["archived"] == 3 and report["more_than_git"]["wikis"] == 1
    user = store.head("wendy")
    assert user is not None and user.get("SyncdRepos") == "3"

    proc = run_cli("restore", "wendy/docs", "--to", str(tmp_path / "r1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restored = tmp_path / "r1" / "wendy" / "docs.wiki.git"
    assert refs_of(restored) == wiki_refs(forge, "wendy", "docs")
    assert git("show", "master:Home.md", cwd=restored).encode() == PAGES["Home.md"]
    assert (tmp_path / "r1" / "wendy" / "docs.git").is_dir()

    # Unchanged: one ref listing, nothing fetched, nothing written.
    forge.reset_counters()
    before = store.head(layout.bundle_key("wendy", "docs.wiki"))
    sync("wendy")
    assert forge.pack_requests("wendy", "docs.wiki") == 0
    assert forge.clones("wendy", "docs.wiki") == 1
    assert store.head(layout.bundle_key("wendy", "docs.wiki")) == before

    # An edit (the repository's pushed_at does not move): an increment.
    forge.edit_wiki("wendy", "docs", {"Next.md": b"# Next\n"})
    assert "wikis 1 archived" in sync("wendy")
    base = store.head(layout.bundle_key("wendy", "docs.wiki"))
    assert base is not None and base.get("Increments") == "1"
    restored = tmp_path / "r2" / "wendy" / "docs.wiki.git"
    proc = run_cli("restore", "wendy", "--to", str(tmp_path / "r2"))  # every archive
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert refs_of(restored) == wiki_refs(forge, "wendy", "docs")
    assert git("show", "master:Next.md", cwd=restored) == "# Next\n"

    code, report = verify("wendy")
    assert code == 0, report
    names = {r["name"]: r["result"] for u in report["users"] for r in u["repositories"]}
    assert names["docs.wiki"] == "verified"


def test_a_wiki_that_fails_does_not_fail_its_repository(
        env: None, forge: Forge, store: Store) -> None:
    forge.add_user("wes", [RepoSpec("docs", wiki=PAGES)])
    wiki = forge.git_root / "wes" / "docs.wiki.git"
    shutil.rmtree(wiki / "objects")  # advertised refs, no objects: its clone fails
    (wiki / "objects").mkdir()
    out = sync("wes")
    assert "wikis 0 archived, 1 failed" in out
    repo = store.head(layout.bundle_key("wes", "docs"))
    assert repo is not None and repo.size > 0 and not repo.get(ERROR)
    failed = store.head(layout.bundle_key("wes", "docs.wiki"))
    assert failed is not None and failed.size == 0 and "git clone failed" in failed.get(ERROR)
    user = store.head("wes")
    assert user is not None and not user.get(ERROR) and user.get("SyncdRepos") == "1"


def test_show_and_serve_list_the_wiki_beside_its_repository(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("wanda", [RepoSpec("a", wiki=PAGES), RepoSpec("a-b")])
    sync("wanda")
    proc = run_cli("show", "wanda", "--json")
    assert proc.returncode == 0, proc.stderr
    repos = orjson.loads(proc.stdout)["repositories"]
    assert [(r["name"], r["wiki_of"]) for r in repos] == [
        ("a", None), ("a.wiki", "a"), ("a-b", None)]
    served = start_serve(dict(os.environ), tmp_path / "serve.log")
    try:
        page = served.get("/users/wanda").text
        assert "the wiki of a" in page
        assert page.index("/users/wanda/a.bundle") < page.index("/users/wanda/a.wiki.bundle") \
            < page.index("/users/wanda/a-b.bundle")
        got = served.get("/users/wanda/a.wiki.bundle")
        assert got.status_code == 200
        assert got.content == store.read_bytes(layout.bundle_key("wanda", "a.wiki"))
        assert served.get("/users/wanda/a.wiki/states").status_code == 200
    finally:
        stop_serve(served)


def test_a_repository_name_ending_in_wiki_is_no_repository() -> None:
    # GitHub refuses such names ("cannot end in .wiki"): the name is the wiki's.
    for name in ("x.wiki", "x.WIKI"):
        with pytest.raises(InvalidName):
            check_repo_name(name)
    assert is_archive_name("x.wiki") and not is_archive_name(".wiki")
    assert layout.parse_key("u/x.wiki.bundle") == layout.StoreKey("u", "x.wiki",
                                                                   layout.Kind.BUNDLE)
    assert layout.wiki_of("x.wiki") == "x" and layout.wiki_of("x") is None


def test_with_rest_a_wiki_edit_is_archived_when_the_listing_answers_304(
        env: None, forge: Forge, store: Store, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """REST's conditional listing answers 304 when no repository changed, and a wiki edit
    moves no repository: the wikis the user's object lists are still checked (one ref listing
    each, no API request), an edit archived as an increment."""
    monkeypatch.setenv("GITHUB_API", "rest")
    forge.add_user("wren", [RepoSpec("docs", wiki=PAGES), RepoSpec("plain")])
    assert "wikis 1 archived" in sync("wren")
    forge.edit_wiki("wren", "docs", {"Next.md": b"# Next\n"})
    forge.reset_counters()
    out = sync("wren")
    # Both lists (repositories, gists) answered 304.
    assert forge.counters["api_304"] == 2 and not forge.counters["api_200"], forge.counters
    assert "wikis 1 archived" in out, out
    assert forge.clones("wren", "plain.wiki") == 0  # the stored listing says it has none
    base = store.head(layout.bundle_key("wren", "docs.wiki"))
    assert base is not None and base.get("Increments") == "1"
    proc = run_cli("restore", "wren/docs", "--to", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert refs_of(tmp_path / "r" / "wren" / "docs.wiki.git") == wiki_refs(forge, "wren", "docs")
    user = store.head("wren")
    assert user is not None and user.get("Wikis") == "1" and not user.get(ERROR)
    # Unchanged again: one ref listing, nothing fetched or written.
    forge.reset_counters()
    before = store.head(layout.bundle_key("wren", "docs.wiki"))
    assert sync("wren") == "wren: unchanged since the last sync (304)\n"
    assert forge.clones("wren", "docs.wiki") == 1
    assert forge.pack_requests("wren", "docs.wiki") == 0
    assert store.head(layout.bundle_key("wren", "docs.wiki")) == before


def test_with_rest_a_304_reads_the_stored_listing_only_for_users_with_wikis(
        env: None, forge: Forge, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Wikis` on the user's object says how many of its repositories have a wiki: 0 costs
    a 304 no store read and no git; an object written before the count existed is read once,
    and the count kept."""
    monkeypatch.setenv("GITHUB_API", "rest")
    forge.add_user("nell", [RepoSpec("code")])
    forge.add_user("olga", [RepoSpec("docs", wiki=PAGES)])
    for login in ("nell", "olga"):
        sync(login)
    nell = store.head("nell")
    assert nell is not None and nell.get("Wikis") == "0"
    # 0 is trusted: olga's object said 0, its 304 does not look for the wiki it has.
    olga = store.head("olga")
    assert olga is not None and olga.get("Wikis") == "1"
    store.replace_metadata("olga", {**olga.metadata, "Wikis": "0"})
    forge.reset_counters()
    assert sync("olga") == "olga: unchanged since the last sync (304)\n"
    assert forge.clones("olga", "docs.wiki") == 0 and forge.counters["api_200"] == 0
    # An object from before the count: read on its 304, its wiki checked, the count kept.
    olga = store.head("olga")
    assert olga is not None
    store.replace_metadata("olga", {k: v for k, v in olga.metadata.items()
                                    if k.lower() != "wikis"})
    forge.edit_wiki("olga", "docs", {"Next.md": b"# Next\n"})
    assert "wikis 1 archived" in sync("olga")
    olga = store.head("olga")
    assert olga is not None and olga.get("Wikis") == "1"
