"""git plumbing: the closed environment and the timeout that kills a whole process group."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bulkbackup.config import GitHubSettings
from bulkbackup.errors import GitError
from bulkbackup.gitops import git_env, run_git

TOKEN = "ghp_gitopsSECRET0123456789"


def test_env_is_closed_and_carries_the_token_only_as_a_scoped_header(tmp_path: Path) -> None:
    os.environ["AWS_SECRET_ACCESS_KEY"] = "do-not-leak"
    try:
        env = git_env(tmp_path, GitHubSettings(api_url="https://api.github.com"), TOKEN)
    finally:
        del os.environ["AWS_SECRET_ACCESS_KEY"]
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_ALLOW_PROTOCOL"] == "http:https"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert "AWS_SECRET_ACCESS_KEY" not in env and "GITHUB_TOKEN" not in env
    pairs = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
             for i in range(int(env["GIT_CONFIG_COUNT"]))}
    assert pairs["credential.helper"] == ""
    header_keys = [k for k in pairs if k.endswith(".extraHeader")]
    assert header_keys == ["http.https://github.com/.extraHeader",
                           "http.http://github.com/.extraHeader"]
    assert TOKEN not in "".join(pairs.values())  # base64 inside a Basic header, never raw
    # git itself sees the configuration (and would refuse file:// and ssh://).
    out = run_git(["config", "--get-regexp", r"credential\.helper"], tmp_path, env, 10)
    assert out.strip() == "credential.helper"


def test_no_token_no_header(tmp_path: Path) -> None:
    env = git_env(tmp_path, GitHubSettings(), None)
    assert not any(v.endswith(".extraHeader") for k, v in env.items() if k.startswith("GIT_"))


def test_file_protocol_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.git"
    run_git(["init", "--bare", "-q", str(src)], tmp_path, dict(os.environ), 10)
    env = git_env(tmp_path, GitHubSettings(), None)
    with pytest.raises(GitError, match="clone failed"):
        run_git(["clone", "--mirror", f"file://{src}", str(tmp_path / "m.git")], tmp_path, env, 10)


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    env = git_env(tmp_path, GitHubSettings(), None)
    env["GIT_CONFIG_COUNT"] = str(int(env["GIT_CONFIG_COUNT"]) + 1)
    last = int(env["GIT_CONFIG_COUNT"]) - 1
    env[f"GIT_CONFIG_KEY_{last}"] = "alias.hang"
    # A grandchild that would outlive a plain kill of git.
    env[f"GIT_CONFIG_VALUE_{last}"] = f"!sh -c 'echo $$ > {marker}; sleep 60'"
    started = time.monotonic()
    with pytest.raises(GitError, match="timed out after 1s"):
        run_git(["hang"], tmp_path, env, 1)
    assert time.monotonic() - started < 30
    pid = int(marker.read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
