"""GitHub logins ignore case: one account is one archive (DESIGN.md "Logins"). Real
redis-server, both stores, real `bulkbackup` processes (and a real `serve`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from bulkbackup import config
from bulkbackup.queue import keys
from bulkbackup.store import Store, casefold, open_store
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import git, run_cli, serve_get


def members(r: redis.Redis) -> list[str]:
    return sorted(str(m) for m in r.zrange(keys.TRACKED, 0, -1))


def test_track_and_ingest_make_one_member_per_account(clean_env: None, r: redis.Redis,
                                                      tmp_path: Path) -> None:
    proc = run_cli("track", "octocat", "OctoDog")
    assert proc.returncode == 0 and "octocat: added" in proc.stdout, proc.stderr
    proc = run_cli("track", "Octocat", "OCTOCAT", "octodog", "octocat", "new-One")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "new-One: added", "Octocat: already tracked as octocat",
        "OCTOCAT: already tracked as octocat", "octodog: already tracked as OctoDog",
        "octocat: already tracked"]
    assert members(r) == ["github.com/OctoDog", "github.com/new-One", "github.com/octocat"]
    assert r.hgetall(keys.LOGINS) == {"octodog": "OctoDog", "new-one": "new-One"}

    dump = tmp_path / "users.json"
    dump.write_text('{"login": "OCTOCAT"}\n{"login": "NEW-one"}\n{"login": "Fresh"}\n'
                    '{"login": "fresh"}\n')
    proc = run_cli("ingest", str(dump))
    assert proc.returncode == 0 and "1 newly tracked, 3 already tracked" in proc.stderr, \
        proc.stderr
    assert members(r) == ["github.com/Fresh", "github.com/OctoDog", "github.com/new-One",
                          "github.com/octocat"]


def test_rebuild_fills_the_index_from_the_store(clean_env: None, r: redis.Redis,
                                                store_url: str) -> None:
    store = open_store(config.load().store)
    store.put_bytes("MonaLisa", b"[]", {"LastSync": "2026-11-28T17:00:00Z"})
    store.put_bytes("plain", b"[]", {"LastSync": "2026-11-28T17:00:00Z"})
    store.close()
    proc = run_cli("rebuild")
    assert proc.returncode == 0 and "2 tracked" in proc.stderr, proc.stderr
    assert r.hgetall(keys.LOGINS) == {"monalisa": "MonaLisa"}
    proc = run_cli("track", "monalisa", "PLAIN")
    assert proc.stdout.splitlines() == ["monalisa: already tracked as MonaLisa",
                                        "PLAIN: already tracked as plain"]
    assert members(r) == ["github.com/MonaLisa", "github.com/plain"]


def test_store_lookups_ignore_case(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small listings, so the search has to walk the case variants character by character.
    monkeypatch.setattr(casefold, "SCAN_USERS", 3)
    names = ["aBcD", "abce", "ABCF", "abcg", "Abch", "abz", "b", "aBcD-2", "aBcDe"]
    for name in names:
        store.put_bytes(name, b"[]", {})
    store.put_bytes("abcd/r.bundle", b"x", {})  # a folder without a user object: not a user
    assert store.top_ignoring_case("abcd", 5, whole=True) == (["aBcD"], False)
    assert store.top_ignoring_case("ABCE", 5, whole=True) == (["abce"], False)
    assert store.top_ignoring_case("abcx", 5, whole=True) == ([], False)
    assert store.top_ignoring_case("abc", 10) == (
        sorted(["aBcD", "abce", "ABCF", "abcg", "Abch", "aBcD-2", "aBcDe"]), False)
    assert store.top_ignoring_case("ABC", 3) == (["ABCF", "Abch", "aBcD"], True)


def test_commands_find_the_stored_spelling(env: None, forge: Forge, store: Store,
                                           tmp_path: Path) -> None:
    forge.add_user("octocat", [RepoSpec("Hello-World")])
    proc = run_cli("sync", "octocat")
    assert proc.returncode == 0 and "archived" in proc.stdout, proc.stdout + proc.stderr

    proc = run_cli("show", "OctoCat")
    assert proc.returncode == 0 and "user octocat" in proc.stdout, proc.stderr
    assert "Hello-World" in proc.stdout
    proc = run_cli("restore", "OCTOCAT/Hello-World", "--to", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git("for-each-ref", cwd=tmp_path / "out" / "octocat" / "Hello-World.git")
    proc = run_cli("verify", "Octocat", "octocat")
    assert proc.returncode == 0 and "1 users" in proc.stderr, proc.stdout + proc.stderr
    assert "octocat: 1 archives, 1 verified" in proc.stdout

    proc = run_cli("sync", "Octocat")  # the archived user, under its stored spelling
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(i.key for i in store.list_top()) == ["octocat"]
    proc = run_cli("show", "nobody")
    assert proc.returncode == 1 and "user nobody is not in the store" in proc.stderr


def test_serve_paths_and_search_ignore_case(clean_env: None, r: redis.Redis, forge: Forge,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKBACKUP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    forge.add_user("octocat", [RepoSpec("Hello-World")])
    forge.add_user("OctoDog", [RepoSpec("r")])
    assert run_cli("track", "octocat", "OctoDog").returncode == 0
    assert run_cli("run", "--procs", "1").returncode == 0
    assert run_cli("track", "octo-unsynced").returncode == 0
    got = serve_get(dict(os.environ), tmp_path, [
        "/users/Octocat", "/api/users/OCTOCAT", "/api/users/octodog",
        "/users/OctoCat/Hello-World.bundle", "/users/OCTOCAT.json", "/api/users?q=Octo",
        "/api/users?q=OCTO-UNSYNCED", "/api/users/nobody"])
    status = [g.status_code for g in got]
    assert status == [200, 200, 200, 200, 200, 200, 200, 404], status
    assert "Hello-World" in got[0].text
    assert got[1].json()["login"] == "octocat" and got[2].json()["login"] == "OctoDog"
    assert got[3].content == (tmp_path / "store" / "octocat" / "Hello-World.bundle"
                              ).read_bytes()
    assert [u["login"] for u in got[5].json()["users"]] == ["OctoDog", "octocat"]
    assert [u["login"] for u in got[6].json()["users"]] == ["octo-unsynced"]
    assert [repo["name"] for repo in got[4].json()] == ["Hello-World"]


def test_track_with_a_token_asks_github_for_the_spelling(clean_env: None, r: redis.Redis,
                                                         forge: Forge) -> None:
    forge.add_user("MonaLisa", [])
    env = {"GITHUB_TOKEN": "ghp_trackTOKEN", "GITHUB_API_URL": forge.url}
    proc = run_cli("track", "monalisa", "no-such-user", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["MonaLisa: added",
                                        "no-such-user: not found on GitHub, not added"]
    assert members(r) == ["github.com/MonaLisa"]
    asked = forge.counters["api_user"]
    assert asked == 2
    proc = run_cli("track", "MONALISA", env=env)  # tracked already: GitHub is not asked
    assert proc.stdout.splitlines() == ["MONALISA: already tracked as MonaLisa"]
    assert forge.counters["api_user"] == asked and "ghp_trackTOKEN" not in proc.stderr
