"""The users list from Redis's per-user summaries alone, and one list of repositories for
`show --json` and the user page. Real `bulkbackup run` and `serve` processes over a local
store, the stand-in GitHub and the session's redis-server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import (
    Served,
    base_env,
    rows_by_login,
    run_backup,
    run_cli,
    start_serve,
    stop_serve,
)

SMALL = b"not really a bundle\n"


@pytest.fixture
def forge_env(redis_url: str, tmp_path: Path) -> Iterator[tuple[Forge, dict[str, str], Path]]:
    """alice: a repository and one whose clone fails (partial); bob: two repositories;
    `gone-user` unknown to the stand-in. The stand-in, the environment of the commands, the
    store's folder."""
    store = tmp_path / "backup" / "github.com"
    with Forge(tmp_path / "forge") as forge:
        forge.add_user("alice", [RepoSpec("hello"), RepoSpec("broken", missing=True)])
        forge.add_user("bob", [RepoSpec("one"), RepoSpec("two")])
        env = base_env(tmp_path, redis_url, str(store))
        env["GITHUB_API_URL"] = forge.url
        yield forge, env, store


def users(served: Served) -> dict[str, dict[str, object]]:
    resp = served.get("/api/users")
    assert resp.status_code == 200, resp.text
    return rows_by_login(resp.json())


def test_the_users_list_reads_reasons_and_badges_from_redis_not_the_store(
        forge_env: tuple[Forge, dict[str, str], Path], r: redis.Redis, tmp_path: Path) -> None:
    forge, env, store = forge_env
    run_backup(env, ["alice", "bob", "gone-user"])
    forge.remove_user("bob")  # bob was listed before: gone now, its counts kept
    run_backup(env, ["bob"])
    summaries = r.hgetall("bulkbackup:syncd")
    assert set(summaries) == {"alice", "bob", "gone-user"}  # gone-user: first sync, zeros
    for login in ("alice", "bob", "gone-user"):
        # The store's objects go behind its back: the list can no longer read them.
        shutil.move(store / login, tmp_path / f"{login}.object")
    served = start_serve(env, tmp_path / "serve.log")
    try:
        rows = users(served)
    finally:
        stop_serve(served)
    alice, bob, gone = rows["alice"], rows["bob"], rows["gone-user"]
    assert (alice["status"], alice["badge"]) == ("error", "partial")
    assert str(alice["error"]).startswith("1 of 2 repositories failed: broken")
    assert (alice["syncd_repos"], alice["reported_repos"]) == (1, 2)
    assert (bob["status"], bob["badge"]) == ("error", "gone")
    assert str(bob["error"]).startswith("user bob not found on GitHub (")
    assert (bob["syncd_repos"], bob["reported_repos"]) == (2, 2)  # its last listing's
    assert (gone["status"], gone["badge"]) == ("error", "gone")
    assert str(gone["error"]).startswith("user gone-user not found on GitHub (")
    assert (gone["syncd_repos"], gone["reported_repos"]) == (0, 0)
    for row in rows.values():
        assert len(str(row["error"])) <= 120 and "\n" not in str(row["error"])


def test_a_summary_without_a_reason_falls_back_to_one_head(
        forge_env: tuple[Forge, dict[str, str], Path], r: redis.Redis, tmp_path: Path) -> None:
    _, env, _ = forge_env
    run_backup(env, ["alice"])
    r.hset("bulkbackup:syncd", "alice", "1 0 1 1 2")  # an older version's: no reason
    served = start_serve(env, tmp_path / "serve.log")
    try:
        alice = users(served)["alice"]
    finally:
        stop_serve(served)
    assert (alice["status"], alice["badge"]) == ("error", "partial")
    assert str(alice["error"]).startswith("1 of 2 repositories failed: broken")


def test_show_and_the_user_page_list_the_same_valid_repositories(
        forge_env: tuple[Forge, dict[str, str], Path], tmp_path: Path) -> None:
    _, env, store = forge_env
    run_backup(env, ["bob"])
    for name in ("bad name", "x" * 101, "a%2fb", "..", "café"):
        (store / "bob" / f"{name}.bundle").write_bytes(SMALL)  # behind the store's back
    (store / "bob" / "..zip").write_bytes(SMALL)
    proc = run_cli("show", "bob", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    shown = [repo["name"] for repo in json.loads(proc.stdout)["repositories"]]
    assert shown == ["one", "two"]
    served = start_serve(env, tmp_path / "serve.log")
    try:
        resp = served.get("/api/users/bob")
    finally:
        stop_serve(served)
    assert resp.status_code == 200, resp.text
    assert [repo["name"] for repo in resp.json()["repositories"]] == shown
