"""What README.md, docs/*.md and jobs/README.md tell a user to paste, run as written.

One archive (octocat/Hello-World: a full bundle and three increments, made by real
`bulkbackup sync`s from the GitHub stand-in into a local store) serves every test: the
README's restore commands, plain git on the store's files, the pages' commands in a POSIX
shell other than bash, and `serve` as the docs start it. Each test names the doc it checks.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import layout
from bulkbackup.queue import keys
from bulkbackup.testing import gharchive as gh
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.lfs import LfsObject
from bulkbackup.testing.services import free_port, start_redis
from tests.helpers import (
    ROOT,
    base_env,
    git,
    git_run,
    next_second,
    part_missing,
    refs_of,
    run_cli,
    run_config,
    serve_on_database,
    start_serve,
    stop_serve,
    sync,
    wait_for,
)
from tests.pages import Commands

BIG = os.urandom(400_000)  # incompressible: each increment stays far below half the bundle


@dataclass
class Archived:
    env: dict[str, str]
    tmp: Path
    store: Path
    refs: list[dict[str, str]]  # the stand-in's refs at each sync, oldest first
    at: list[str]  # a time that selects each state with `restore --at`, oldest first


@pytest.fixture(scope="module")
def archived(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    """octocat/Hello-World synced four times: the base, then three increments (a push; a
    deleted branch and a new tag; a push). Each state has its own `--at` second."""
    tmp = tmp_path_factory.mktemp("claims")
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    store = tmp / "backup" / "github.com"
    with Forge(tmp / "forge") as forge:
        forge.add_user("octocat", [RepoSpec(
            "Hello-World", files={"README": b"hello\n", "big.bin": BIG},
            branches={"dev": {"dev.txt": b"dev\n"}}, tags=["v1.0"])])
        env = base_env(tmp, redis_server, str(store))
        env["GITHUB_API_URL"] = forge.url
        bare = forge.git_root / "octocat" / "Hello-World.git"
        changes = [
            lambda: None,
            lambda: forge.push("octocat", "Hello-World", {"a.txt": b"a\n"}),
            lambda: (forge.delete_ref("octocat", "Hello-World", "refs/heads/dev"),
                     forge.add_tag("octocat", "Hello-World", "v2.0")),
            lambda: forge.push("octocat", "Hello-World", {"b.txt": b"b\n"}),
        ]
        refs, ats = [], []
        for change in changes:
            change()
            sync("octocat", env)
            refs.append(refs_of(bare))
            next_second()  # a whole second after this sync's LastSync ...
            ats.append(datetime.fromtimestamp(int(time.time()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            next_second()  # ... and before the next sync's
    client.zadd("tracked", {"github.com/octocat": 1.0})
    client.close()
    yield Archived(env, tmp, store, refs, ats)


def _parts(archived: Archived) -> list[Path]:
    """The current chain's increments in the local store, in order."""
    return sorted((archived.store / "octocat" / "Hello-World.bundle.d").glob("*/*.bundle"))


def _linked_copy(archived: Archived, name: str) -> Path:
    """A copy of the store whose files are hard links: the same inodes, so the local store's
    metadata sidecars still describe them (a plain copy would not: see
    test_a_copied_local_store_restores_the_same_state). Sidecars are replaced by rename, never
    written in place, so writes to the copy leave the original alone."""
    copy = archived.tmp / name
    shutil.copytree(archived.store, copy, copy_function=os.link)
    return copy


def _block(doc: str, heading: str) -> list[str]:
    """The commands of the first ```sh block under ``heading`` in ``doc`` (comments cut)."""
    text = (ROOT / doc).read_text()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", 1)]
    block = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()
            if line.split("  #", 1)[0].strip()]


def _bash(cmd: str, cwd: Path, env: dict[str, str], shell: str = "bash"
          ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in env.items() if not k.startswith("GIT_")}
    return subprocess.run([shell, "-c", cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=clean, check=False)


# -- README "Restore" -----------------------------------------------------------------------


def test_the_readme_restore_commands_work_pasted_in_order(archived: Archived) -> None:
    """README "Restore": the three commands, pasted one after the other in one folder (the
    example time replaced by one within the archive's history: the first increment's)."""
    lines = _block("README.md", "## Restore")
    assert [shlex.split(x)[:2] for x in lines] == [["bulkbackup", "restore"]] * 3, lines
    cwd = archived.tmp / "readme-restore"
    cwd.mkdir()
    outs = []
    for line in lines:
        words = shlex.split(line)[1:]
        if "--at" in words:
            words[words.index("--at") + 1] = archived.at[1]
        proc = run_cli(*words, env=archived.env, cwd=cwd)
        assert proc.returncode == 0, f"`{line}` exited {proc.returncode}: {proc.stdout}"
        outs.append(words[words.index("--to") + 1])
    latest, then = archived.refs[-1], archived.refs[1]
    assert refs_of(cwd / outs[0] / "octocat" / "Hello-World.git") == latest
    assert (cwd / outs[1] / "octocat" / "Hello-World.zip").stat().st_size > 0
    assert refs_of(cwd / outs[1] / "octocat" / "Hello-World.git") == latest
    assert refs_of(cwd / outs[2] / "octocat" / "Hello-World.git") == then


def test_a_full_bundle_and_its_increments_restore_with_plain_git(archived: Archived) -> None:
    """README "Restore": "a full bundle is plain git: `git clone --mirror <repo>.bundle`;
    increments apply on top with `git fetch --prune <part> '+refs/*:refs/*'` in order" (here
    on the local store's own files, docs/archive.md "Store layout")."""
    cwd = archived.tmp / "plain-git"
    cwd.mkdir()
    bundle = archived.store / "octocat" / "Hello-World.bundle"
    proc = _bash(f"git clone --mirror {shlex.quote(str(bundle))}", cwd, archived.env)
    assert proc.returncode == 0, proc.stderr
    mirror = cwd / "Hello-World.git"  # git names it after the bundle
    assert refs_of(mirror) == archived.refs[0]
    parts = _parts(archived)
    assert len(parts) == 3
    for part, refs in zip(parts, archived.refs[1:], strict=True):
        proc = _bash(f"git fetch --prune {shlex.quote(str(part))} '+refs/*:refs/*'", mirror,
                     archived.env)
        assert proc.returncode == 0, proc.stderr
        assert refs_of(mirror) == refs
    git("fsck", "--full", "--no-dangling", cwd=mirror)


def test_a_bundle_of_the_local_store_is_git_cloned(archived: Archived) -> None:
    """docs/archive.md "Store layout": `<root>/<login>/<repo>.bundle` ... "(git clone it)":
    a working copy of the chain's base state."""
    cwd = archived.tmp / "clone-it"
    cwd.mkdir()
    bundle = archived.store / "octocat" / "Hello-World.bundle"
    proc = git_run("clone", str(bundle), "copy", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert (cwd / "copy" / "README").read_bytes() == b"hello\n"
    remote = {r.replace("refs/remotes/origin/", "refs/heads/"): s
              for r, s in refs_of(cwd / "copy").items() if r != "refs/remotes/origin/HEAD"}
    base = archived.refs[0]
    assert {r: s for r, s in remote.items() if r.startswith("refs/heads/")} == {
        r: s for r, s in base.items() if r.startswith("refs/heads/")}


# -- docs/archive.md "Restore" --------------------------------------------------------------


def test_restore_at_with_zip_restores_an_earlier_state_without_a_zip(archived: Archived
                                                                      ) -> None:
    """docs/archive.md "Restore": "Only the latest state has a zip: with `--at` an earlier
    state is restored without one"; "its config records `bulkbackup.restoredFrom =
    <login>/<repo>`"."""
    to = archived.tmp / "at-zip"
    proc = run_cli("restore", "octocat/Hello-World", "--to", str(to), "--zip", "--at",
                   archived.at[2], env=archived.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mirror = to / "octocat" / "Hello-World.git"
    assert refs_of(mirror) == archived.refs[2]
    assert not (to / "octocat" / "Hello-World.zip").exists()
    assert git("config", "bulkbackup.restoredFrom", cwd=mirror).strip() == "octocat/Hello-World"
    # The latest state (a time after it) has its zip.
    proc = run_cli("restore", "octocat/Hello-World", "--to", str(to), "--zip", "--force",
                   "--at", archived.at[3], env=archived.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert refs_of(mirror) == archived.refs[3]
    assert (to / "octocat" / "Hello-World.zip").stat().st_size > 0


def test_restore_zip_of_a_repository_whose_zip_is_gone_fails(archived: Archived) -> None:
    """docs/archive.md "Restore": "`--zip` ... a repository with branches but no zip then
    fails" (exit 1, naming it), and leaves no mirror behind."""
    copy = _linked_copy(archived, "no-zip-store")
    (copy / "octocat" / "Hello-World.zip").unlink()
    to = archived.tmp / "no-zip"
    env = {**archived.env, "BULKBACKUP_STORE": str(copy)}
    proc = run_cli("restore", "octocat/Hello-World", "--to", str(to), "--zip", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "octocat/Hello-World: FAILED" in proc.stdout
    assert layout.zip_key("octocat", "Hello-World") in proc.stdout
    assert not (to / "octocat" / "Hello-World.git").exists()
    # Without --zip the same store restores (its latest state).
    proc = run_cli("restore", "octocat/Hello-World", "--to", str(to), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert refs_of(to / "octocat" / "Hello-World.git") == archived.refs[-1]


# -- the pages' commands, in a POSIX shell other than bash ----------------------------------


@pytest.mark.parametrize("shell", ["dash", "zsh"])
def test_the_user_page_commands_work_in_other_posix_shells(archived: Archived, shell: str
                                                           ) -> None:
    """bulkbackup/web/restore_cmds.py: "Each one works pasted into a POSIX shell (bash, zsh,
    dash)"; with three increments the user page shows the loop (past two)."""
    if shutil.which(shell) is None:
        part_missing(f"{shell} is not installed (apt-get install {shell}; .ci/run installs it)")
    served = start_serve(archived.env, archived.tmp / f"serve-{shell}.log")
    try:
        parser = Commands()
        parser.feed(served.get("/users/octocat").text)
        commands = parser.found
        assert len(commands) == 3 and "for i in" in commands[1], commands
        work = archived.tmp / f"pasted-{shell}"
        work.mkdir()
        for cmd in commands:
            proc = _bash(cmd, work, archived.env, shell)
            assert proc.returncode == 0, (cmd, proc.stderr)
        assert refs_of(work / "Hello-World.git") == archived.refs[-1]
        assert (work / "Hello-World" / "b.txt").read_bytes() == b"b\n"
        # Every state of the states page, each in its own folder.
        states = served.get("/api/users/octocat/Hello-World/states").json()["states"]
        assert len(states) == 4
        for state in states:
            folder = work / f"state-{state['increments']}"
            folder.mkdir()
            for cmd in state["commands"]["git"]:
                proc = _bash(cmd, folder, archived.env, shell)
                assert proc.returncode == 0, (cmd, proc.stderr)
            assert refs_of(folder / "Hello-World.git") == archived.refs[state["increments"]]
    finally:
        stop_serve(served)


# -- README "Serve", docs/serve.md: where serve listens -------------------------------------


def _serve(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """`bulkbackup serve ARGS`, once 127.0.0.1 answers; the address its first line names."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "serve", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=out)
    wait_for(lambda: proc.poll() is not None or log.read_text().count("\n") > 0, 60,
             "serve's first line")
    first = log.read_text().splitlines()[0]
    match = re.fullmatch(r"bulkbackup serve: http://(\S+):(\d+)/ \(Ctrl-C stops\)", first)
    if match is None or proc.poll() is not None:
        proc.kill()
        raise AssertionError(log.read_text()[-2000:])
    wait_for(lambda: _answers(f"http://127.0.0.1:{match[2]}/"), 60, "serve answering")
    return proc, f"http://{match[1]}:{match[2]}/"


def _answers(url: str) -> bool:
    """Whether a server accepts connections at ``url`` (any HTTP answer)."""
    try:
        httpx.get(url + "healthz", timeout=30)
    except httpx.ConnectError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def test_serve_binds_loopback_unless_told_otherwise(archived: Archived) -> None:
    """README "Serve": `bulkbackup serve  # http://127.0.0.1:8000/` (config.yaml's
    serve.host and serve.port), and `BULKBACKUP_ADMIN_TOKEN=... bulkbackup serve --host
    0.0.0.0 --port 8080` (here a free port): "binds 127.0.0.1 unless told otherwise"; the
    admin token adds users with POST /api/users. 127.0.0.2 reaches only a server bound to
    every address."""
    defaults = config.Settings()
    assert (defaults.serve.host, defaults.serve.port) == ("127.0.0.1", 8000)
    port = free_port()
    proc, url = _serve(archived.env, archived.tmp / "serve-1.log", "--port", str(port))
    try:
        assert url == f"http://127.0.0.1:{port}/"
        assert not _answers(f"http://127.0.0.2:{port}/")
    finally:
        _stop(proc)
    env = {**archived.env, "BULKBACKUP_ADMIN_TOKEN": "readme-admin"}
    port = free_port()
    proc, url = _serve(env, archived.tmp / "serve-2.log", "--host", "0.0.0.0", "--port",
                       str(port))
    try:
        assert url == f"http://0.0.0.0:{port}/"
        other = f"http://127.0.0.2:{port}/"
        assert _answers(other)
        added = httpx.post(other + "api/users", json={"logins": ["readme-added"]},
                           headers={"Authorization": "Bearer readme-admin"}, timeout=30)
        assert added.status_code == 200 and added.json()["added"] == ["readme-added"]
    finally:
        _stop(proc)
    # serve.host, serve.port and serve.admin_token from the configuration file, no flags.
    cfg = archived.tmp / "serve-host.yaml"
    port = free_port()
    cfg.write_text(f"serve:\n  host: 0.0.0.0\n  port: {port}\n  admin_token: from-file\n")
    proc, url = _serve({**archived.env, "BULKBACKUP_CONFIG": str(cfg)},
                       archived.tmp / "serve-3.log")
    try:
        assert url == f"http://0.0.0.0:{port}/" and _answers(f"http://127.0.0.2:{port}/")
        added = httpx.post(url + "api/users", json={"logins": ["config-added"]},
                           headers={"Authorization": "Bearer from-file"}, timeout=30)
        assert added.status_code == 200 and added.json()["added"] == ["config-added"]
    finally:
        _stop(proc)


# -- README "Running on many machines", jobs/README.md "Running a remote worker" ------------


def test_a_remote_worker_runs_on_the_server_url_and_a_token_file(
        redis_server: str, forge: Forge, tmp_path: Path) -> None:
    """README: `bulkbackup worker-token add box-1` "prints the token once"; the worker needs
    "its own GitHub tokens, and nothing else", "exits 0 once nothing is due";
    `worker-token revoke box-1` stops it (exit 2); `worker-token list` shows the token.
    jobs/README.md: `run --procs N` with env `BULKBACKUP_SERVER` and
    `BULKBACKUP_WORKER_TOKEN_FILE` naming a file that holds the token (no REDIS_URL, no
    BULKBACKUP_STORE, no AWS_*)."""
    r, store, serve_env, served = serve_on_database(redis_server, 3, tmp_path)
    try:
        added = run_cli("worker-token", "add", "box-1", env=serve_env)
        assert added.returncode == 0 and len(added.stdout.split()) == 1, added.stderr
        secret = tmp_path / "worker-token"
        secret.write_text(added.stdout)  # as printed, its newline included
        secret.chmod(0o600)
        forge.add_user("remote-ann", [RepoSpec("r1"), RepoSpec("r2")])
        r.zadd("tracked", {"github.com/remote-ann": float("-inf")})
        cfg = tmp_path / "remote.yaml"
        cfg.write_text(run_config())
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GITHUB_", "BULKBACKUP_", "REDIS_", "AWS_"))}
        env.update(BULKBACKUP_SERVER=served.url, BULKBACKUP_WORKER_TOKEN_FILE=str(secret),
                   GITHUB_TOKENS="remote-worker-github-token", GITHUB_API_URL=forge.url,
                   BULKBACKUP_CONFIG=str(cfg))
        work = tmp_path / "box"
        work.mkdir()
        proc = run_cli("run", "--procs", "2", env=env, cwd=work, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for name in ("r1", "r2"):
            assert (store / "remote-ann" / f"{name}.bundle").stat().st_size > 0
        assert not (work / "backup").exists()  # it opened no store of its own
        listed = run_cli("worker-token", "list", env=serve_env)
        assert listed.returncode == 0 and "box-1" in listed.stdout, listed.stderr
        revoked = run_cli("worker-token", "revoke", "box-1", env=serve_env)
        assert revoked.returncode == 0, revoked.stderr
        proc = run_cli("run", "--procs", "2", env=env, cwd=work, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "the server refused the worker token" in proc.stderr
        assert added.stdout.strip() not in proc.stdout + proc.stderr
    finally:
        stop_serve(served)
        r.close()


# -- README "Events" ------------------------------------------------------------------------


def test_the_readme_events_commands_work_pasted(clean_env: None, r: redis.Redis,
                                                tmp_path: Path) -> None:
    """README "Events": `events --from 2026-11-01-0 --to 2026-11-01-23` reads a day of hours
    from events.url (GHARCHIVE_URL); `events 2026-11-01-15.json.gz` reads a file ("files (or
    -), gzip or plain JSON lines"); `--follow` goes on with each hour as it is published."""
    lines = _block("README.md", "## Events")
    assert [shlex.split(x)[:2] for x in lines] == [["bulkbackup", "events"]] * 3, lines
    r.zadd(keys.TRACKED, {keys.member(x): 1.0 for x in ("alice", "bob", "carol", "dan")})
    day = datetime(2026, 11, 1, tzinfo=UTC)
    cwd = tmp_path / "events"
    cwd.mkdir()
    with gh.GHArchive(tmp_path / "gharchive") as archive:
        env = {"GHARCHIVE_URL": archive.url}
        for h in range(24):
            hour = day + timedelta(hours=h)
            archive.publish(hour, [gh.push("alice/r1", at=hour)] if h == 3 else [])
        # The file form first: hour 15 of that day, a gzip file in the current folder.
        hour15 = day + timedelta(hours=15)
        gh.write_hour(cwd / "2026-11-01-15.json.gz", gh.lines_of([gh.push("bob/b", at=hour15)]))
        proc = run_cli(*shlex.split(lines[2])[1:], env=env, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert r.smembers(keys.events_refs("bob")) == {"b"}
        # Plain JSON lines on stdin (`-`).
        plain = b"".join(gh.lines_of([gh.push("dan/d", at=hour15)]))
        proc = run_cli("events", "-", stdin=plain, env=env, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert r.smembers(keys.events_refs("dan")) == {"d"}
        # The day from events.url: 23 hours read, the file's hour 15 not read again.
        proc = run_cli(*shlex.split(lines[0])[1:], env=env, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert r.smembers(keys.events_refs("alice")) == {"r1"}
        assert r.zcard(keys.EVENTS_HOURS) == 24
        # --follow: the next hour once it is published; Ctrl-C ends it (exit 130).
        follow = subprocess.Popen([sys.executable, "-m", "bulkbackup",
                                   *shlex.split(lines[1])[1:]], cwd=cwd,
                                  env={**os.environ, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            next_hour = day + timedelta(days=1)
            archive.publish(next_hour, [gh.push("carol/c", at=next_hour)])
            wait_for(lambda: r.smembers(keys.events_refs("carol")) == {"c"}, 120,
                     "--follow to read the next hour")
            follow.send_signal(signal.SIGINT)
            _, err = follow.communicate(timeout=60)
            assert follow.returncode == 130, err
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()


# -- README "Configuration": environment variables, and settings docs describe ---------------


def test_bulkbackup_debug_adds_the_traceback(clean_env: None, tmp_path: Path) -> None:
    """README "Commands": "Errors are one line on stderr (`--debug` or `BULKBACKUP_DEBUG=1`
    adds the traceback)"."""
    env = {"BULKBACKUP_STORE": str(tmp_path / "nowhere")}
    plain = run_cli("show", "octocat", env=env, cwd=tmp_path)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1, plain.stderr
    debug = run_cli("show", "octocat", env={**env, "BULKBACKUP_DEBUG": "1"}, cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


def test_redis_url_on_a_unix_socket(clean_env: None, tmp_path: Path) -> None:
    """README "Configuration": `REDIS_URL` `unix://` (a real redis-server on a socket)."""
    sock = tmp_path / "redis.sock"
    proc, _ = start_redis(tmp_path / "redis-unix", extra_args=("--unixsocket", str(sock)))
    try:
        env = {"REDIS_URL": f"unix://{sock}", "BULKBACKUP_STORE": str(tmp_path / "store")}
        out = run_cli("track", "octocat", env=env, cwd=tmp_path)
        assert out.returncode == 0 and "added" in out.stdout, out.stdout + out.stderr
        client = redis.Redis(unix_socket_path=str(sock))
        assert client.zscore(keys.TRACKED, keys.member("octocat")) == float("-inf")
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_aws_endpoint_url_works_where_aws_endpoint_url_s3_does(
        clean_env: None, s3_endpoint: str, forge: Forge, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Configuration" and jobs/README.md: "`AWS_ENDPOINT_URL` (all services) works
    where `AWS_ENDPOINT_URL_S3` does"."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    cfg = tmp_path / "s3.yaml"
    cfg.write_text("store:\n  create_bucket: true\n")
    forge.add_user("octocat", [RepoSpec("Hello-World")])
    env = {"BULKBACKUP_STORE": "s3://github.com", "GITHUB_API_URL": forge.url,
           "BULKBACKUP_CONFIG": str(cfg)}
    proc = run_cli("sync", "octocat", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("show", "octocat", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and '"Hello-World"' in proc.stdout, proc.stderr
    assert not (tmp_path / "backup").exists()  # the bucket, not a folder


def test_github_git_host_is_the_only_host_clone_urls_may_point_to(
        clean_env: None, forge: Forge, tmp_path: Path) -> None:
    """README "Configuration": `GITHUB_GIT_HOST`: "the only host clone URLs may point to"
    (the stand-in's clone URLs are on its own host: refused, recorded, nothing cloned)."""
    forge.add_user("octocat", [RepoSpec("Hello-World")])
    env = {"BULKBACKUP_STORE": str(tmp_path / "store"), "GITHUB_API_URL": forge.url,
           "GITHUB_API": "rest"}
    proc = run_cli("sync", "octocat", env={**env, "GITHUB_GIT_HOST": "git.example.org"},
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = run_cli("show", "octocat", env=env, cwd=tmp_path).stdout
    assert "refusing clone URL outside git.example.org" in shown, shown
    assert (tmp_path / "store" / "octocat" / "Hello-World.bundle").stat().st_size == 0
    # Named as the stand-in's host, the same sync archives it.
    host = forge.url.split("//", 1)[1].rstrip("/")
    proc = run_cli("sync", "octocat", env={**env, "GITHUB_GIT_HOST": host}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "store" / "octocat" / "Hello-World.bundle").stat().st_size > 0


def test_events_max_hour_mb_fails_a_larger_hour(clean_env: None, r: redis.Redis,
                                               tmp_path: Path) -> None:
    """docs/run.md "events": an hour is read "at most `events.max_hour_mb`": a larger one
    fails the command (exit 1), the hour not remembered."""
    hour = datetime(2026, 11, 1, 5, tzinfo=UTC)
    filler = base64.b64encode(os.urandom(1_500_000)).decode()  # ~1.5 MB once gzipped
    cfg = tmp_path / "events.yaml"
    cfg.write_text("events:\n  max_hour_mb: 1\n")
    with gh.GHArchive(tmp_path / "gharchive") as archive:
        archive.publish(hour, [gh.event("IssueCommentEvent", "alice/r", at=hour,
                                        payload={"comment": {"body": filler}})])
        assert archive.path(hour).stat().st_size > 1 << 20
        env = {"GHARCHIVE_URL": archive.url, "BULKBACKUP_CONFIG": str(cfg)}
        proc = run_cli("events", "--from", "2026-11-01-5", "--to", "2026-11-01-5", env=env,
                       cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "larger than events.max_hour_mb (1 MB)" in proc.stderr
        assert r.zcard(keys.EVENTS_HOURS) == 0
        cfg.write_text("events:\n  max_hour_mb: 2\n")
        proc = run_cli("events", "--from", "2026-11-01-5", "--to", "2026-11-01-5", env=env,
                       cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert r.zcard(keys.EVENTS_HOURS) == 1


def test_run_max_lfs_repo_mb_stops_a_repositorys_lfs_objects(
        env: None, forge: Forge, tmp_path: Path) -> None:
    """docs/archive.md "Wikis and Git LFS objects": "the objects fetched for one repository in
    one pass stop at `run.max_lfs_repo_mb`"; the rest is recorded in `LfsError`."""
    objs = {f"data/{n}.bin": LfsObject(os.urandom(700_000)) for n in ("a", "b", "c")}
    forge.add_user("lena", [RepoSpec("media", lfs=objs)])
    cfg = tmp_path / "lfs.yaml"
    cfg.write_text("github:\n  allow_http_token: true\nrun:\n  max_lfs_repo_mb: 1\n")
    proc = run_cli("sync", "lena", env={"GITHUB_TOKEN": "lfs-token", "BULKBACKUP_CONFIG":
                                        str(cfg)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LFS objects 1 stored, 2 not stored" in proc.stdout, proc.stdout
    shown = run_cli("show", "lena", "--json", env={"BULKBACKUP_CONFIG": str(cfg)}).stdout
    assert shown.count("over run.max_lfs_repo_mb (1) in this pass") == 2, shown


def test_serve_lease_batch_max_bounds_a_lease(redis_server: str, tmp_path: Path) -> None:
    """docs/serve.md "Lease API": "A lease call claims at most `serve.lease_batch_max`"."""
    url = re.sub(r"/\d+$", "/4", redis_server)
    r = redis.Redis.from_url(url)
    r.flushdb()
    (tmp_path / "store").mkdir()
    env = base_env(tmp_path, url, str(tmp_path / "store"))
    Path(env["BULKBACKUP_CONFIG"]).write_text("serve:\n  lease_batch_max: 2\n")
    r.zadd(keys.TRACKED, {keys.member(f"u{i}"): float("-inf") for i in range(5)})
    served = start_serve(env, tmp_path / "serve.log")
    try:
        token = run_cli("worker-token", "add", "box-1", env=env).stdout.strip()
        resp = httpx.post(served.url + "/api/lease", json={"n": 10}, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["users"]) == 2
    finally:
        stop_serve(served)
        r.close()


def test_verify_works_without_redis(archived: Archived) -> None:
    """README "Troubleshooting": "`sync`, `show`, `restore` and `verify` work without Redis"
    (tests/test_readme.py pastes the first three); docs/archive.md "Verify": "Redis being
    away is a warning, not a failure"."""
    copy = _linked_copy(archived, "verify-store")
    env = {**archived.env, "BULKBACKUP_STORE": str(copy), "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = run_cli("verify", "octocat", env=env, cwd=archived.tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 verified, 0 failed" in proc.stderr, proc.stderr
    assert "redis" in proc.stderr.lower() and "Traceback" not in proc.stderr


# -- docs/archive.md "Store layout": a local store is a folder -------------------------------


def test_a_copied_local_store_restores_the_same_state(archived: Archived) -> None:
    """A local store is "a local folder" (README): copied as folders are (here `cp -r`), it
    should restore what the original restores."""
    copy = archived.tmp / "copied-store"
    subprocess.run(["cp", "-r", str(archived.store), str(copy)], check=True)
    to = archived.tmp / "from-copy"
    proc = run_cli("restore", "octocat/Hello-World", "--to", str(to),
                   env={**archived.env, "BULKBACKUP_STORE": str(copy)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert refs_of(to / "octocat" / "Hello-World.git") == archived.refs[-1]


# -- jobs/README.md "Redis memory" ----------------------------------------------------------


def test_the_redis_memory_script_runs_as_jobs_readme_shows(clean_env: None) -> None:
    """jobs/README.md: `python jobs/redis_memory.py --users 1000000` (here 2 000 users: the
    same code, in seconds) prints the figures the table is made of."""
    proc = subprocess.run([sys.executable, "jobs/redis_memory.py", "--users", "2000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2,000 users" in proc.stdout
    assert re.search(r"^tracked \(b?'skiplist'\): used_memory delta .* B/user; MEMORY USAGE",
                     proc.stdout, re.M), proc.stdout
    assert "bulkbackup:syncd (" in proc.stdout


# -- docs/serve.md: page sizes ---------------------------------------------------------------


def test_pages_of_users_are_50_and_at_most_200(archived: Archived) -> None:
    """docs/serve.md `/api/users?q=&cursor=&limit=`: "50 a page (`limit` up to 200)", both
    for the list and a search; `/users` shows 50 rows."""
    url = re.sub(r"/\d+$", "/5", archived.env["REDIS_URL"])
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.zadd(keys.TRACKED, {keys.member(f"user{i:03d}"): float(i) for i in range(250)})
    r.close()
    (archived.tmp / "empty-store").mkdir(exist_ok=True)
    env = {**archived.env, "REDIS_URL": url,
           "BULKBACKUP_STORE": str(archived.tmp / "empty-store")}
    served = start_serve(env, archived.tmp / "serve-pages.log")
    try:
        assert len(served.get("/api/users").json()["users"]) == 50
        doc = served.get("/api/users?limit=1000").json()
        assert len(doc["users"]) == 200 and doc["next"]
        # The search index is kept by track.lua and `rebuild`, not by a ZADD: rebuild it.
        proc = run_cli("rebuild", env=env, cwd=archived.tmp)
        assert proc.returncode == 0, proc.stderr
        assert len(served.get("/api/users?q=user&limit=1000").json()["users"]) == 200
        assert len(served.get("/api/users?q=user").json()["users"]) == 50
        assert served.get("/users").text.count('href="/users/user') == 50
    finally:
        stop_serve(served)
