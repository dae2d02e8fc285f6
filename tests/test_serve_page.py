"""The user page of `bulkbackup serve`, by what a person does with it: every command it shows,
pasted into a shell, restores the repository; with Redis down it still shows what the store
knows. One store (a user with increments, made by real `bulkbackup sync`s from the stand-in)
is served by real `bulkbackup serve` processes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bulkbackup.backup.results import PARTIAL_ERROR
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import start_redis
from bulkbackup.web.users import badge_of
from tests.helpers import base_env, git, refs_of, run_cli, start_serve, stop_serve
from tests.pages import Commands

BIG = os.urandom(400_000)  # incompressible: the increments stay far smaller than the bundle
LONG = "a-rather-long-repository-name_with.several-words-in-it"


@dataclass
class Stored:
    env: dict[str, str]
    refs: dict[str, dict[str, str]]  # repository -> the stand-in's refs at the last sync
    tmp: Path


def sync(env: dict[str, str], login: str) -> None:
    proc = run_cli("sync", login, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def stored(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """ann: `big` with two increments (a push, then a push with a deleted branch and tag
    and a new tag) and `LONG` synced once; tracked in the session's Redis."""
    tmp = tmp_path_factory.mktemp("page")
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    with Forge(tmp / "forge") as forge:
        forge.add_user("ann", [
            RepoSpec("big", files={"blob.bin": BIG, "a.txt": b"a\n"},
                     branches={"dev": {"d.txt": b"d\n"}}, tags=["v1"]),
            RepoSpec(LONG, files={"README.md": b"long\n"})])
        env = base_env(tmp, redis_server, str(tmp / "backup" / "github.com"))
        env["GITHUB_API_URL"] = forge.url
        sync(env, "ann")
        forge.push("ann", "big", {"a.txt": b"a2\n"})
        sync(env, "ann")
        forge.push("ann", "big", {"b.txt": b"b\n"})
        forge.delete_ref("ann", "big", "refs/heads/dev")
        forge.delete_ref("ann", "big", "refs/tags/v1")
        forge.add_tag("ann", "big", "v2")
        sync(env, "ann")
        refs = {name: refs_of(forge.git_root / "ann" / f"{name}.git") for name in ("big", LONG)}
    client.zadd("tracked", {"github.com/ann": 1.0})
    client.close()
    yield Stored(env, refs, tmp)


def test_every_command_on_the_user_page_works_pasted_into_a_shell(stored: Stored) -> None:
    served = start_serve(stored.env, stored.tmp / "serve.log")
    try:
        page = served.get("/users/ann")
        assert page.status_code == 200
        parser = Commands()
        parser.feed(page.text)
        commands = parser.found
        # The bundle and a working copy per repository, and each of big's two increments.
        assert len(commands) == 2 + 2 + 2, commands
        work = stored.tmp / "pasted"
        work.mkdir()
        shell_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        for cmd in commands:  # as pasted, one after the other, in one empty folder
            proc = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True,
                                  text=True, timeout=120, env=shell_env, check=False)
            assert proc.returncode == 0, (cmd, proc.stderr)
        for name, refs in stored.refs.items():
            mirror = work / f"{name}.git"
            git("fsck", "--full", "--no-dangling", cwd=mirror)
            assert refs_of(mirror) == refs, name
            assert (work / name / ".git").is_dir()  # the working copy
        assert "refs/heads/dev" not in refs_of(work / "big.git")  # deleted by increment 2
        assert (work / "big" / "b.txt").read_bytes() == b"b\n"
        # A long name may wrap after its hyphens, dots and underscores.
        assert "a-<wbr>rather-<wbr>long-" in page.text
        # No admin token configured: the dashboard offers no form that cannot work.
        home = served.get("/")
        assert home.status_code == 200 and 'id="add-form"' not in home.text
    finally:
        stop_serve(served)


def test_user_page_with_redis_down_shows_what_the_store_knows(stored: Stored) -> None:
    proc, url = start_redis(stored.tmp / "redis-down")
    redis.Redis.from_url(url).zadd("tracked", {"github.com/ann": 1.0})
    served = start_serve({**stored.env, "REDIS_URL": url}, stored.tmp / "serve-down.log")
    try:
        proc.terminate()
        proc.wait(10)
        assert served.get("/api/stats").status_code == 503  # Redis is down indeed
        page = served.get("/users/ann")
        assert page.status_code == 200, page.text[:300]
        assert 'id="banner"' in page.text
        assert "queue status unavailable: Redis unreachable" in page.text
        assert 'href="/users/ann/big.bundle"' in page.text and "data-cmd" in page.text
        doc = served.get("/api/users/ann").json()
        assert doc["unavailable"] == ["redis"] and doc["status"] == "synced"
        assert {r["name"] for r in doc["repositories"]} == {"big", LONG}
        assert doc["last_sync"] and doc["repositories"][0]["bundle_bytes"] > 0
        bundle = served.get("/users/ann/big.bundle")
        assert bundle.status_code == 200 and bundle.content.startswith(b"# v")
        # A login the store does not know may still be tracked: that needs Redis.
        assert served.get("/api/users/nobody").status_code == 503
        assert "Traceback" not in served.log.read_text()
    finally:
        stop_serve(served)


def test_badges_tell_the_errors_apart() -> None:
    failed = PARTIAL_ERROR.format(failed=1, reported=5) + "x: git clone failed"
    assert badge_of("error", failed) == "partial"
    assert badge_of("error", "user x not found on GitHub (404)") == "gone"  # REST
    assert badge_of("error", "user x not found on GitHub (NOT_FOUND)") == "gone"  # GraphQL
    assert badge_of("error", "GitHub API failed: 502 Bad Gateway") == "error"
    assert badge_of("syncing", failed) == "syncing"
    assert badge_of("synced", None) == "synced"
