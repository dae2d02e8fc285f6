"""The default store, `./backup/github.com`, is relative: every command resolves it once,
against the folder it was started in, however git and the web server move about."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulkbackup import config
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import git, run_cli, serve_get


def test_config_resolves_a_relative_store_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = config.load(None, environ={"BULKBACKUP_WORKER_HOST": "h"})
    assert s.store.url == str(tmp_path / "backup" / "github.com")
    s = config.load(None, environ={"BULKBACKUP_STORE": "rel/store", "BULKBACKUP_WORKER_HOST": "h"})
    assert s.store.url == str(tmp_path / "rel" / "store")
    s = config.load(None, environ={"BULKBACKUP_STORE": "s3://b", "BULKBACKUP_WORKER_HOST": "h"})
    assert s.store.url == "s3://b"


def test_every_command_with_the_default_relative_store(
        clean_env: None, redis_url: str, forge: Forge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKBACKUP_STORE", raising=False)
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    forge.add_user("octocat", [RepoSpec("Hello-World", branches={"dev": {"d": b"d\n"}})])
    cwd = tmp_path / "here"
    cwd.mkdir()
    store = cwd / "backup" / "github.com"

    proc = run_cli("sync", "octocat", cwd=cwd)
    assert proc.returncode == 0 and "archived" in proc.stdout, proc.stdout + proc.stderr
    assert (store / "octocat" / "Hello-World.bundle").is_file()

    proc = run_cli("restore", "octocat/Hello-World", "--to", "out", "--zip", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "refs/heads/dev" in git("for-each-ref", cwd=cwd / "out" / "octocat"
                                   / "Hello-World.git")

    proc = run_cli("verify", "octocat", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 verified, 0 failed" in proc.stdout
    assert "verify failed" not in (store / "octocat" / "Hello-World.bundle%meta").read_text()

    proc = run_cli("show", "octocat", cwd=cwd)
    assert proc.returncode == 0 and "Hello-World" in proc.stdout, proc.stderr
    proc = run_cli("stats", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("rebuild", cwd=cwd)
    assert proc.returncode == 0 and "1 tracked" in proc.stderr, proc.stderr

    got = serve_get(dict(os.environ), cwd, ["/users/octocat/Hello-World.bundle",
                                            "/users/octocat/Hello-World.zip",
                                            "/api/users/octocat"])
    assert [r.status_code for r in got] == [200, 200, 200]
    assert got[0].content == (store / "octocat" / "Hello-World.bundle").read_bytes()
