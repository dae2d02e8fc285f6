"""Remote workers, phase 2 (issue 23): `bulkbackup run --server URL` with real processes: a
real `serve` (real redis-server, the local store or moto_server behind it), the GitHub
stand-in, and a real `run --server` whose environment has no Redis URL and no store or AWS
settings, started in an empty folder (a store it opened by mistake would appear there)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bulkbackup import faults
from bulkbackup.archive.layout import CHAIN_ID
from bulkbackup.config import StoreSettings
from bulkbackup.queue import keys
from bulkbackup.store import Store, open_store
from bulkbackup.store.s3 import S3Store
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port
from tests.helpers import (
    ROOT,
    Served,
    all_synced,
    read,
    run_cli,
    stop_serve,
    track,
    wait_for,
    workers_of,
)

# Every archive offered for a direct upload on S3, however small (web/lease_uploads.py).
SERVE_CONFIG = ("run:\n  lock_ttl_s: {ttl}\nserve:\n  max_upload_mb: {mb}\n"
                "  direct_uploads_min_kb: 0\n")
RUN_CONFIG = ("run:\n  lock_ttl_s: 4\n  grace_s: 20\n  claim_target_s: 1.0\n"
              "github:\n  backoff_s: 0.05\n")


@dataclass
class Remote:
    """A serve on a store, and the environments of `serve` and of `run --server`."""

    served: Served
    serve_env: dict[str, str]
    run_env: dict[str, str]
    r: redis.Redis
    store: Store
    tmp: Path
    port: int

    def start_run(self, *args: str) -> subprocess.Popen[str]:
        work = self.tmp / "worker-home"
        work.mkdir(exist_ok=True)
        return subprocess.Popen([sys.executable, "-m", "bulkbackup", "run", "--server",
                                 self.served.url, *args], env=self.run_env, cwd=work,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def restart_serve(self, down_s: float) -> None:
        stop_serve(self.served)
        time.sleep(down_s)
        self.served = serve_on(self.serve_env, self.tmp / "serve.log", self.port)


def serve_on(env: dict[str, str], log: Path, port: int) -> Served:
    """`bulkbackup serve` on ``port``; returns once it answers."""
    import httpx

    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "serve", "--port",
                                 str(port)], env=env, cwd=ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            httpx.get(url + "/healthz", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    wait_for(up, what="serve answering")
    return Served(url, proc, log)


def clean(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if not k.startswith(("GITHUB_", "BULKBACKUP_", "REDIS_", "AWS_"))}


def remote_for(tmp: Path, redis_url: str, store_url: str, forge: Forge, ttl_s: int = 10,
               max_upload_mb: int = 64) -> Iterator[Remote]:
    cfg = tmp / "serve.yaml"
    cfg.write_text(SERVE_CONFIG.format(ttl=ttl_s, mb=max_upload_mb))
    (tmp / "spool").mkdir(exist_ok=True)
    serve_env = {**clean(dict(os.environ)), "REDIS_URL": redis_url,
                 "BULKBACKUP_STORE": store_url, "BULKBACKUP_CONFIG": str(cfg),
                 "TMPDIR": str(tmp / "spool")}
    if store_url.startswith("s3://"):
        serve_env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    store = open_store(StoreSettings(url=store_url), create=True)
    port = free_port()
    served = serve_on(serve_env, tmp / "serve.log", port)
    token = run_cli("worker-token", "add", "box-1", env=serve_env).stdout.strip()
    run_cfg = tmp / "run.yaml"
    run_cfg.write_text(RUN_CONFIG)
    # No Redis URL, no store, no AWS settings: only the server, the token and GitHub's.
    run_env = {**clean(dict(os.environ)), "GITHUB_API_URL": forge.url,
               "BULKBACKUP_CONFIG": str(run_cfg), "BULKBACKUP_WORKER_TOKEN": token,
               "BULKBACKUP_WORKER_HOST": "remote-box"}
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    remote = Remote(served, serve_env, run_env, r, store, tmp, port)
    try:
        yield remote
    finally:
        stop_serve(remote.served)
        store.close()
        r.close()


@pytest.fixture(params=["local", "s3"])
def remote(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, forge: Forge,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    monkeypatch.delenv("REDIS_URL")
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        url = "s3://github.com"
    else:
        url = str(tmp_path / "store" / "github.com")
    yield from remote_for(tmp_path, redis_url, url, forge)


def archived(store: Store) -> dict[str, list[str]]:
    """Every stored key (chain ids made equal) -> the refs of its bundle header."""
    out: dict[str, list[str]] = {}
    for info in store.list():
        key = CHAIN_ID.sub("CHAIN", info.key)
        refs: list[str] = []
        if key.endswith(".bundle") and info.size:
            header = read(store, info.key).split(b"\n\n", 1)[0].decode()
            refs = sorted(line for line in header.splitlines()[1:]
                          if not line.startswith("-"))
        out[key] = refs
    return out


def population(forge: Forge, prefix: str, n: int) -> list[str]:
    logins = [f"{prefix}{i}" for i in range(n)]
    for i, login in enumerate(logins):
        forge.add_user(login, [RepoSpec(f"repo{j}") for j in range(i % 3)])
    return logins


def local_run(tmp: Path, redis_url: str, forge: Forge, logins: list[str]) -> Store:
    """The same users through a Redis-connected `run` (its own Redis database and store)."""
    url = re.sub(r"/0$", "/1", redis_url)
    r = redis.Redis.from_url(url)
    track(r, *[x for x in logins if not r.zscore(keys.TRACKED, keys.member(x))])
    r.close()
    cfg = tmp / "local.yaml"
    cfg.write_text(RUN_CONFIG)
    store_url = str(tmp / "local-store" / "github.com")
    env = {**clean(dict(os.environ)), "REDIS_URL": url, "BULKBACKUP_STORE": store_url,
           "GITHUB_API_URL": forge.url, "BULKBACKUP_CONFIG": str(cfg)}
    out = subprocess.run([sys.executable, "-m", "bulkbackup", "run", "--procs", "2",
                          "--no-stats"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return open_store(StoreSettings(url=store_url))


def finish(proc: subprocess.Popen[str], timeout_s: float = 300) -> str:
    _, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err[-3000:]
    return err


# -- the same archive as a local run --------------------------------------------------------


def test_a_remote_run_archives_what_a_local_run_does(remote: Remote, forge: Forge,
                                                     redis_url: str) -> None:
    logins = population(forge, "u", 9)
    track(remote.r, *logins)
    start = time.time() - 1
    err = finish(remote.start_run("--procs", "2"))
    assert "run: 9 users synced" in err and "9 archived" in err, err
    assert all_synced(remote.r, logins, start)
    assert not (remote.tmp / "worker-home" / "backup").exists()  # no store of its own
    # The Redis-connected run over the same stand-in (its own Redis database and store).
    local_run(remote.tmp, redis_url, forge, logins).close()
    # New commits: increments, their tips read through the server.
    for login in logins[1:3]:
        forge.push(login, "repo0", {"new.txt": b"more\n"})
    remote.r.zadd(keys.TRACKED, {keys.member(x): 0 for x in logins})
    finish(remote.start_run("--procs", "2"))
    r1 = redis.Redis.from_url(re.sub(r"/0$", "/1", redis_url))
    r1.zadd(keys.TRACKED, {keys.member(x): 0 for x in logins})
    r1.close()
    local = local_run(remote.tmp, redis_url, forge, logins)
    try:
        got, want = archived(remote.store), archived(local)
    finally:
        local.close()
    assert got == want  # nothing else either: no staged upload left below .staging/
    assert any("/CHAIN/" in k for k in got)  # increments were made remotely
    # On S3 the archives went straight to the bucket (serve only committed them); on the
    # local store through serve.
    commits = (remote.tmp / "serve.log").read_text().count('/uploads/commit HTTP/1.1" 200')
    assert (commits > 0) == isinstance(remote.store, S3Store), commits
    # What a local worker writes to Redis, the server wrote at completion.
    assert remote.r.zcard(keys.VERIFY_PENDING) == 2
    assert remote.r.llen(keys.history(logins[1])) == 2


def expected(forge: Forge, logins: list[str]) -> dict[str, list[str]]:
    """What a complete archive of ``logins`` holds (refs of each repository's bundle)."""
    from tests.helpers import remote_refs

    out: dict[str, list[str]] = {}
    for login in logins:
        out[login] = []
        for entry in forge.users[login]:
            name = str(entry["name"])
            out[f"{login}/{name}.bundle"] = sorted(
                f"{sha} {ref}" for ref, sha in remote_refs(forge, login, name).items())
    return out


def bundles(store: Store) -> dict[str, list[str]]:
    """The users' objects and bundles of ``store`` with their branch and tag refs (HEAD
    left out: the stand-in's refs have none)."""
    return {k: [x for x in v if not x.endswith(" HEAD")] for k, v in archived(store).items()
            if k.endswith(".bundle") or "/" not in k}


def stalled_population(forge: Forge, prefix: str, n: int) -> list[str]:
    forge.stall_s = 3
    logins = [f"{prefix}{i}" for i in range(n)]
    for login in logins:
        forge.add_user(login, [RepoSpec("slow", stall=True)])
    return logins


def test_a_remote_worker_killed_mid_user_loses_nothing(remote: Remote, forge: Forge) -> None:
    logins = stalled_population(forge, "k", 4)
    track(remote.r, *logins)
    start = time.time() - 1
    proc = remote.start_run("--procs", "1")
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="a clone in progress")
    held = {k: remote.r.get(k) for k in remote.r.keys("lock:*")}
    victims = workers_of(proc.pid)
    assert victims and held
    os.kill(victims[0], signal.SIGKILL)
    # Its leases lapse (at once rather than after the TTL); the pool's new worker takes them.
    for key, holder in held.items():
        if remote.r.get(key) == holder:
            remote.r.pexpire(key, 1)
    finish(proc)
    assert all_synced(remote.r, logins, start)
    assert bundles(remote.store) == expected(forge, logins)


def test_serve_restarted_mid_run_loses_no_user(remote: Remote, forge: Forge) -> None:
    logins = stalled_population(forge, "s", 4)
    track(remote.r, *logins)
    start = time.time() - 1
    proc = remote.start_run("--procs", "2")
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="a clone in progress")
    # Away longer than the stalled clones: their uploads meet no server and are retried.
    remote.restart_serve(down_s=forge.stall_s + 1)
    err = finish(proc)
    assert "run: 4 users synced" in err, err[-3000:]
    assert all_synced(remote.r, logins, start)
    assert bundles(remote.store) == expected(forge, logins)


def test_a_revoked_token_stops_its_worker_and_lands_nothing(remote: Remote,
                                                            forge: Forge) -> None:
    logins = stalled_population(forge, "v", 4)
    track(remote.r, *logins)
    proc = remote.start_run("--procs", "2")
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="a clone in progress")
    out = run_cli("worker-token", "revoke", "box-1", env=remote.serve_env)
    assert out.returncode == 0, out.stderr
    before = archived(remote.store)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("bulkbackup: error: ") and "worker token" in last, err[-3000:]
    assert archived(remote.store) == before  # nothing it sent after the revoke landed
    # Its users were given back: due again, held by nobody.
    assert not remote.r.keys("lock:*")


# -- uploads in the background (run/uploads.py) ----------------------------------------------


@pytest.fixture
def local_remote(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path,
                 forge: Forge, monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    """A serve on the local store (an indirect parameter: its serve.max_upload_mb)."""
    monkeypatch.delenv("REDIS_URL")
    yield from remote_for(tmp_path, redis_url, str(tmp_path / "store" / "github.com"), forge,
                          max_upload_mb=getattr(request, "param", 64))


@pytest.mark.parametrize("local_remote", [1], indirect=True, ids=["1mb"])
def test_an_upload_refused_in_the_background_fails_its_user(local_remote: Remote,
                                                            forge: Forge) -> None:
    """A repository whose archive the server refuses (413) while the worker goes on with
    the next one: the user fails as a synchronous upload would have failed it (retried,
    then left for the next run), is never completed, and nothing made after the refused
    upload lands (no later archive, no user object)."""
    remote = local_remote  # refuses uploads over 1 MB (413)
    forge.add_user("big", [RepoSpec("a"), RepoSpec("b", files={"data.bin": os.urandom(2 << 20)}),
                           RepoSpec("c")])
    logins = population(forge, "ok", 3)
    track(remote.r, "big", *logins)
    start = time.time() - 1
    proc = remote.start_run("--procs", "1")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "HTTP 413" in err and "3 users synced" in err, err[-3000:]
    assert all_synced(remote.r, logins, start)
    assert remote.r.zscore(keys.TRACKED, keys.member("big")) == float("-inf")
    assert keys.member("big") not in remote.r.smembers(keys.worker_archived("box-1"))
    assert remote.r.llen(keys.history("big")) == 0
    stored = [o.key for o in remote.store.list("big")]
    assert "big" not in stored, stored  # no user object
    assert not [k for k in stored if k.startswith(("big/b.", "big/c."))], stored
    assert not list((remote.tmp / "spool").glob("bulkbackup-uploads-*/*"))


def test_a_worker_killed_with_uploads_pending_blocks_nothing(local_remote: Remote,
                                                            forge: Forge) -> None:
    """The worker SIGKILLs itself right after handing its second upload over (a zip being
    sent, a bundle waiting: faults.py): the server lands nothing half-written, and once the
    leases lapse the next run archives every user in full."""
    remote = local_remote
    logins = [f"f{i}" for i in range(3)]
    for login in logins:
        forge.add_user(login, [RepoSpec("r", files={"data.bin": os.urandom(1 << 20)}),
                               RepoSpec("s")])
    track(remote.r, *logins)
    start = time.time() - 1
    remote.run_env[faults.ENV] = "2"
    proc = remote.start_run("--procs", "1")
    wait_for(lambda: workers_of(proc.pid), what="a worker")
    first = workers_of(proc.pid)[0]
    wait_for(lambda: not alive(first), what="the worker killing itself")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    for key in remote.r.keys("lock:*"):  # their leases lapse (now rather than at the TTL)
        remote.r.pexpire(key, 1)
    del remote.run_env[faults.ENV]
    finish(remote.start_run("--procs", "1"))
    assert all_synced(remote.r, logins, start)
    assert bundles(remote.store) == expected(forge, logins)
    assert not list((remote.tmp / "spool").glob("bulkbackup-uploads-*/*"))


def alive(pid: int) -> bool:
    """Running (not gone, nor a zombie not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
