"""git plumbing: the closed environment and the timeout that kills a whole process group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bulkbackup.config import GitHubSettings
from bulkbackup.errors import GitError
from bulkbackup.forge.git_auth import git_auth
from bulkbackup.git.gitops import git_env, run_git

TOKEN = "ghp_gitopsSECRET0123456789"


def test_env_is_closed_and_carries_the_token_only_as_a_scoped_header(tmp_path: Path) -> None:
    os.environ["AWS_SECRET_ACCESS_KEY"] = "do-not-leak"
    try:
        env = git_env(tmp_path, git_auth(GitHubSettings(api_url="https://api.github.com"), TOKEN))
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
    assert header_keys == ["http.https://github.com/.extraHeader"]  # never over plain http
    assert pairs["http.followRedirects"] == "false"
    assert TOKEN not in "".join(pairs.values())  # base64 inside a Basic header, never raw
    # git itself sees the configuration (and would refuse file:// and ssh://).
    out = run_git(["config", "--get-regexp", r"credential\.helper"], tmp_path, env, 10)
    assert out.strip() == "credential.helper"


def test_no_token_no_header(tmp_path: Path) -> None:
    env = git_env(tmp_path, git_auth(GitHubSettings(), None))
    assert not any(v.endswith(".extraHeader") for k, v in env.items() if k.startswith("GIT_"))


def test_file_protocol_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.git"
    run_git(["init", "--bare", "-q", str(src)], tmp_path, dict(os.environ), 10)
    env = git_env(tmp_path, git_auth(GitHubSettings(), None))
    with pytest.raises(GitError, match="clone failed"):
        run_git(["clone", "--mirror", f"file://{src}", str(tmp_path / "m.git")], tmp_path, env, 10)


def _hang_env(tmp_path: Path, marker: Path) -> dict[str, str]:
    env = git_env(tmp_path, git_auth(GitHubSettings(), None))
    env["GIT_CONFIG_COUNT"] = str(int(env["GIT_CONFIG_COUNT"]) + 1)
    last = int(env["GIT_CONFIG_COUNT"]) - 1
    env[f"GIT_CONFIG_KEY_{last}"] = "alias.hang"
    # A grandchild that would outlive a plain kill of git.
    env[f"GIT_CONFIG_VALUE_{last}"] = f"!sh -c 'echo $$ > {marker}; sleep 60'"
    return env


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    env = _hang_env(tmp_path, marker)
    started = time.monotonic()
    with pytest.raises(GitError, match="timed out after 1s"):
        run_git(["hang"], tmp_path, env, 1)
    assert time.monotonic() - started < 30
    _assert_dies(int(marker.read_text()))


class _Boom(BaseException):
    pass


def test_any_exit_while_waiting_kills_the_process_group(tmp_path: Path) -> None:
    """KeyboardInterrupt, SystemExit or any exception raised while git runs (here from a
    signal handler, as Ctrl-C or SIGTERM would) kills git and its helpers before it goes on."""
    marker = tmp_path / "child.pid"
    env = _hang_env(tmp_path, marker)

    def boom(_sig: int, _frame: object) -> None:
        if marker.exists() and marker.read_text().strip():
            raise _Boom
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # the grandchild is not there yet

    old = signal.signal(signal.SIGALRM, boom)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(_Boom):
            run_git(["hang"], tmp_path, env, 120)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _assert_dies(int(marker.read_text()))


def _assert_dies(pid: int) -> None:
    def alive() -> bool:
        try:  # a killed process whose parent died stays a zombie until init reaps it
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()


def test_token_reaches_git_as_a_header_never_in_the_mirror(tmp_path: Path) -> None:
    import base64

    from bulkbackup.testing.forge import Forge, RepoSpec

    with Forge(tmp_path / "forge") as forge:
        forge.add_user("octocat", [RepoSpec("a")])
        # The stand-in is http://: allow the token there (test/dev only) to see it used.
        gh = GitHubSettings(api_url=forge.url, allow_http_token=True)
        env = git_env(tmp_path, git_auth(gh, TOKEN))
        mirror = tmp_path / "a.git"
        run_git(["clone", "--mirror", "-q", f"{forge.url}/octocat/a.git", str(mirror)],
                tmp_path, env, 30)
        basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        assert f"Basic {basic}" in forge.auth_headers_seen
        for path in mirror.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert TOKEN.encode() not in data and basic.encode() not in data, path
        assert "extraheader" not in (mirror / "config").read_text().lower()


def test_the_token_goes_only_to_the_clone_host_over_its_schemes() -> None:
    """GitAuth's rule (packhttp sends the header by it; git_env scopes git's to the same)."""
    auth = git_auth(GitHubSettings(), TOKEN)
    assert auth.host == "github.com" and auth.schemes == ("https",)
    header = auth.authorization("https://github.com/u/a.git/")
    assert header is not None and TOKEN not in header
    assert auth.authorization("https://GitHub.com:443/u/a.git/") == header  # one origin
    assert auth.authorization("http://github.com/u/a.git/") is None  # https only
    assert auth.authorization("https://github.com:8443/u/a.git/") is None
    assert auth.authorization("https://evil.example/u/a.git/") is None
    assert git_auth(GitHubSettings(token_for_git=False), TOKEN).authorization(
        "https://github.com/u/a.git/") is None
    assert git_auth(GitHubSettings(), None).authorization("https://github.com/u/a.git/") is None
    http = git_auth(GitHubSettings(allow_http_token=True), TOKEN)
    assert http.authorization("http://github.com/u/a.git/") == header
