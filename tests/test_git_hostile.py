"""git against a hostile or broken server: redirects that would carry the token elsewhere,
GitHub's pull refs, transfers that stall, big files, and `sync` interrupted by a signal.

Real git over smart HTTP from the stand-in (bulkbackup/testing/forge.py); the signal tests
run the real CLI.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkbackup import config
from bulkbackup.config import GitHubSettings, RunSettings
from bulkbackup.errors import ConfigError, GitError
from bulkbackup.forge.git_auth import git_auth
from bulkbackup.git.auth import ANONYMOUS
from bulkbackup.git.gitops import Archive, GitWork, git_env, run_git
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import ROOT, git, git_run, list_heads

TOKEN = "ghp_hostileSECRET0123456789abcdef"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


def archive(forge: Forge, tmp_path: Path, name: str, token: str | None = None,
            allow_http_token: bool = False, **run: object) -> Archive:
    gh = GitHubSettings(api_url=forge.url, allow_http_token=allow_http_token)
    settings = dataclasses.replace(RunSettings(git_timeout_s=60), **run)  # type: ignore[arg-type]
    work = GitWork(settings, tmp_path / "work")
    return work.archive("u", name, f"{forge.url}/u/{name}.git", "main", git_auth(gh, token))


@pytest.fixture
def other(forge: Forge) -> Iterator[Forge]:
    """Another host (`localhost`, another port) serving the same repositories: records every
    Authorization header it receives."""
    with Forge(forge.root, host="localhost") as f:
        yield f


# -- item 2: the token goes to github.git_host over https only ------------------------------


def test_token_never_follows_a_redirect_to_another_host(
    forge: Forge, other: Forge, tmp_path: Path
) -> None:
    forge.add_user("u", [RepoSpec("a")])
    forge.git_redirect = other.url  # info/refs answers 302 to the other host
    # The clone host's http:// is allowed here (test only) so the token is really in play.
    with pytest.raises(GitError, match=r"git clone failed: .*302"):
        archive(forge, tmp_path, "a", TOKEN, allow_http_token=True)
    assert f"Basic {BASIC}" in forge.auth_headers_seen  # the configured host had it
    assert other.auth_headers_seen == []  # the other host never did
    # git does not follow the redirect at all: it only talks to the URL it was given.
    assert other.counters["info_refs"] == 0 and other.counters["upload_pack"] == 0


def test_redirect_is_not_followed_without_a_token_either(
    forge: Forge, other: Forge, tmp_path: Path
) -> None:
    forge.add_user("u", [RepoSpec("a")])
    forge.git_redirect = other.url
    with pytest.raises(GitError, match="git clone failed"):
        archive(forge, tmp_path, "a", None)
    assert other.counters["info_refs"] == 0 and other.counters["upload_pack"] == 0


def test_token_is_never_sent_over_plain_http(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("a")])
    result = archive(forge, tmp_path, "a", TOKEN)  # the forge is http://: no token for git
    assert result.bundle is not None
    assert forge.counters["upload_pack"] > 0 and forge.auth_headers_seen == []
    pairs = _config(git_env(tmp_path, git_auth(GitHubSettings(api_url=forge.url), TOKEN)))
    host = forge.url.removeprefix("http://")
    assert [k for k in pairs if k.endswith(".extraHeader")] == [f"http.https://{host}/.extraHeader"]
    https = _config(git_env(tmp_path, git_auth(GitHubSettings(), TOKEN)))
    assert [k for k in https if k.endswith(".extraHeader")] == [
        "http.https://github.com/.extraHeader"]


def _config(env: dict[str, str]) -> dict[str, str]:
    return {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
            for i in range(int(env["GIT_CONFIG_COUNT"]))}


# -- item 3: refs/pull/* stay out unless run.pull_refs ---------------------------------------


def _heads(bundle: Path, cwd: Path) -> dict[str, str]:
    return list_heads(bundle)


def _restored_has(bundle: Path, sha: str, tmp_path: Path) -> bool:
    """Is the object anywhere in the bundle's pack (reachable or not)?"""
    restored = tmp_path / "restored.git"
    git("clone", "--mirror", "-q", str(bundle), str(restored), cwd=tmp_path)
    try:
        return git_run("cat-file", "-e", sha, cwd=restored).returncode == 0
    finally:
        subprocess.run(["rm", "-rf", str(restored)], check=True)


def test_pull_refs_and_their_objects_stay_out_of_the_bundle(
    forge: Forge, tmp_path: Path
) -> None:
    forge.add_user("u", [RepoSpec("p", branches={"dev": {"d.txt": b"dev\n"}}, tags=["v1"],
                                  pulls=[1, 2])])
    source = forge.git_root / "u" / "p.git"
    pull = {n: git("rev-parse", f"refs/pull/{n}/head", cwd=source).strip() for n in (1, 2)}
    main = git("rev-parse", "refs/heads/main", cwd=source).strip()
    result = archive(forge, tmp_path, "p")
    assert result.bundle is not None and result.branch == "main"
    heads = _heads(result.bundle, tmp_path)
    assert set(heads) == {"HEAD", "refs/heads/main", "refs/heads/dev", "refs/tags/v1",
                          "refs/tags/v1-light"}
    assert heads["HEAD"] == main
    for sha in pull.values():
        assert not _restored_has(result.bundle, sha, tmp_path)

    kept = archive(forge, tmp_path, "p", pull_refs=True)
    assert kept.bundle is not None
    heads = _heads(kept.bundle, tmp_path)
    assert {heads["refs/pull/1/head"], heads["refs/pull/2/head"]} == set(pull.values())
    assert all(_restored_has(kept.bundle, sha, tmp_path) for sha in pull.values())


def test_bundle_head_is_the_default_branch(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("t", default_branch="trunk",
                                  branches={"aaa": {"a.txt": b"a\n"}})])
    work = GitWork(RunSettings(git_timeout_s=60), tmp_path / "work")
    result = work.archive("u", "t", f"{forge.url}/u/t.git", "trunk", ANONYMOUS)
    assert result.bundle is not None and result.branch == "trunk"
    restored = tmp_path / "r.git"
    git("clone", "--mirror", "-q", str(result.bundle), str(restored), cwd=tmp_path)
    assert git("symbolic-ref", "HEAD", cwd=restored).strip() == "refs/heads/trunk"
    # The API names no default branch: HEAD is still a branch the mirror has.
    result = work.archive("u", "t", f"{forge.url}/u/t.git", None, ANONYMOUS)
    assert result.bundle is not None and result.branch in ("aaa", "trunk")
    assert _heads(result.bundle, tmp_path)["HEAD"] == _heads(result.bundle, tmp_path)[
        f"refs/heads/{result.branch}"]
    forge.add_user("u", [RepoSpec("s", default_branch="release/2")])
    result = work.archive("u", "s", f"{forge.url}/u/s.git", "release/2", ANONYMOUS)
    assert result.bundle is not None and result.branch == "release/2"
    assert set(_heads(result.bundle, tmp_path)) == {"HEAD", "refs/heads/release/2"}


def test_empty_and_missing_repositories(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("e", empty=True), RepoSpec("m", missing=True)])
    assert archive(forge, tmp_path, "e").bundle is None
    with pytest.raises(GitError, match=r"git clone failed: .*not found"):
        archive(forge, tmp_path, "m")


# -- item 9: a stalled transfer ends quickly; git's memory is bounded -----------------------


def test_a_transfer_that_stalls_midway_ends_on_the_low_speed_limit(
    forge: Forge, tmp_path: Path
) -> None:
    forge.stall_s = 120
    forge.add_user("u", [RepoSpec("s", stall_mid=True)])
    with pytest.raises(GitError) as info:
        archive(forge, tmp_path, "s", git_timeout_s=45, git_low_speed_bytes_s=1000,
                git_low_speed_time_s=1)
    assert "stalled" in str(info.value) and "timed out" not in str(info.value)
    assert forge.counters["upload_pack"] >= 1  # it did start sending the pack


def test_git_memory_settings_reach_git(tmp_path: Path) -> None:
    run = RunSettings(git_threads=2, git_big_file_mb=8, git_low_speed_bytes_s=500,
                      git_low_speed_time_s=30)
    env = git_env(tmp_path, None, run)
    got = {k: run_git(["config", "--get", k], tmp_path, env, 10).strip() for k in (
        "pack.threads", "core.bigFileThreshold", "http.lowSpeedLimit", "http.lowSpeedTime",
        "pack.windowMemory", "core.deltaBaseCacheLimit", "http.followRedirects", "gc.auto",
        "maintenance.auto")}
    # Per-thread caches shared out among the threads: a command's total stays one thread's.
    assert got == {"pack.threads": "2", "core.bigFileThreshold": "8m",
                   "http.lowSpeedLimit": "500", "http.lowSpeedTime": "30",
                   "pack.windowMemory": "128m", "core.deltaBaseCacheLimit": "32m",
                   "http.followRedirects": "false", "gc.auto": "0", "maintenance.auto": "false"}
    off = git_env(tmp_path, None, RunSettings(git_low_speed_bytes_s=0))
    assert "http.lowSpeedLimit" not in _config(off)


def test_git_threads_are_the_cores_shared_among_the_procs(tmp_path: Path) -> None:
    """run.git_threads 0 (the default): each git command gets cores // procs threads, at
    least 1 (one thread made a lone large first archive 1.6x slower than plain git)."""
    cores = len(os.sched_getaffinity(0))
    for procs, threads in ((1, cores), (cores, 1), (cores * 4, 1), (2, max(1, cores // 2))):
        env = git_env(tmp_path, None, RunSettings(), procs)
        config = _config(env)
        assert config["pack.threads"] == str(threads), procs
        assert config["pack.windowMemory"] == f"{max(32, 256 // threads)}m"
        assert config["core.deltaBaseCacheLimit"] == f"{max(8, 64 // threads)}m"
    fixed = git_env(tmp_path, None, RunSettings(git_threads=3), 64)
    assert _config(fixed)["pack.threads"] == "3"
    assert RunSettings().git_threads == 0


@pytest.mark.parametrize("text", [
    "run:\n  git_low_speed_bytes_s: -1\n", "run:\n  git_low_speed_time_s: 0\n",
    "run:\n  git_threads: -1\n", "run:\n  git_threads: 65\n", "run:\n  git_big_file_mb: 0\n",
    "github:\n  allow_http_token: yes-please\n"])
def test_git_limit_settings_are_validated(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError):
        config.load(cfg, {})


_ARCHIVE = """
import sys
from pathlib import Path
from bulkbackup.config import RunSettings
from bulkbackup.git.auth import ANONYMOUS
from bulkbackup.git.gitops import GitWork
url, work, big_mb = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
run = RunSettings(git_timeout_s=120, git_big_file_mb=big_mb)
result = GitWork(run, work).archive("u", "big", url, "main", ANONYMOUS)
print(result.zip, result.bundle)
"""


def test_a_big_file_never_sits_whole_in_gits_memory(forge: Forge, tmp_path: Path) -> None:
    blob = os.urandom(24 << 20)
    forge.add_user("u", [RepoSpec("big", files={"big.bin": blob})])
    # Every git command (fetch, unpack, bundle, archive) gets a data limit (heap and anonymous
    # memory; not the pack files git maps) well below the file's size.
    shim = tmp_path / "bin"
    shim.mkdir()
    real = shutil.which("git")
    (shim / "git").write_text(f'#!/bin/sh\nulimit -d {16 << 10}\nexec {real} "$@"\n')
    (shim / "git").chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-c", _ARCHIVE, f"{forge.url}/u/big.git", str(tmp_path / "w"), "4"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{shim}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    zip_path, bundle = (Path(p) for p in proc.stdout.split())
    with zipfile.ZipFile(zip_path) as z:
        assert z.read("big-main/big.bin") == blob
    git("init", "-q", str(tmp_path / "v"), cwd=tmp_path)
    assert git_run("bundle", "verify", "-q", str(bundle), cwd=tmp_path / "v").returncode == 0


# -- item 12: `sync` interrupted kills git and removes its work folder ----------------------


def _procs_mentioning(*needles: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in cmdline for n in needles):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _wait_for(what: str, check: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sync_interrupted_kills_git_and_removes_its_work_folder(
    clean_env: None, forge: Forge, tmp_path: Path, signum: int
) -> None:
    forge.stall_s = 120
    forge.add_user("u", [RepoSpec("slow", stall=True)])
    work = tmp_path / "work"
    cfg = tmp_path / "sync.yaml"
    cfg.write_text(f"run:\n  work_dir: {work}\n")
    env = {**os.environ, "GITHUB_API_URL": forge.url, "BULKBACKUP_CONFIG": str(cfg),
           "BULKBACKUP_STORE": str(tmp_path / "store")}
    # A SIGINT ignored here (as under `cmd &` in a script) would stay ignored in the child:
    # a handler (not SIG_IGN) while forking gives the child the default disposition.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "sync", "u"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        _wait_for("git to fetch", lambda: forge.counters["upload_pack"] >= 1
                  and _procs_mentioning(forge.url))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], lines
    # git and its helpers are gone (killed, not left to the stalled server), as is the folder.
    _wait_for("git to go", lambda: not _procs_mentioning(forge.url, str(work)), 10)
    assert list(work.iterdir()) == []
