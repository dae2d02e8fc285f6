"""The lock fence: a write lands only if the user's lock is still ours when it commits.

Real redis-server, both stores (a folder, and moto_server over HTTP), real runs of
`bulkbackup run` whose worker is stopped (SIGSTOP) in the middle of an archive upload.
"""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bulkbackup.archive.stored import latest_archive
from bulkbackup.config import StoreSettings
from bulkbackup.errors import Interrupted, LockLost
from bulkbackup.queue import keys, tracked
from bulkbackup.queue.connection import Scripts, server_time
from bulkbackup.queue.locks import LockKeeper
from bulkbackup.store import Store, open_store
from bulkbackup.store.fenced import FencedStore, StopFence
from bulkbackup.store.local import LocalStore
from bulkbackup.store.s3 import S3Store
from bulkbackup.store.tempfiles import INCOMING
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port
from tests.helpers import git, read, start_run, track, wait_for, workers_of

MIB = 1024 * 1024
WID = "1.0.h"


def claim(r: redis.Redis, *logins: str) -> tuple[Scripts, LockKeeper]:
    r.zadd("tracked", {f"github.com/{x}": -math.inf for x in logins})
    scripts = Scripts(r)
    claimer = tracked.Claimer(r, scripts, WID, 2, int(server_time(r)))
    claimed, _ = claimer.claim(len(logins))
    assert len(claimed) == len(logins)
    keeper = LockKeeper(r, scripts, WID, 2)
    keeper.add(claimed, time.monotonic())
    return scripts, keeper


# -- LockKeeper.confirm ------------------------------------------------------------------------


def test_confirm_extends_our_lock_and_refuses_a_lost_one(r: redis.Redis) -> None:
    _, keeper = claim(r, "a", "b")
    assert 1000 < r.pttl("lock:github.com/a") <= 2000  # the claim's TTL
    r.pexpire("lock:github.com/a", 1000)  # no refresher running: the TTL runs down
    keeper.confirm("github.com/a")
    assert r.pttl("lock:github.com/a") > 1500  # one round trip extended it to a whole TTL
    r.set("lock:github.com/b", "thief.0.x")  # taken over after ours expired
    with pytest.raises(LockLost):
        keeper.confirm("github.com/b")
    assert keeper.is_lost("github.com/b")
    assert r.get("lock:github.com/b") == "thief.0.x"  # never touched
    with pytest.raises(LockLost):
        keeper.check("github.com/b")
    r.delete("lock:github.com/a")  # expired while we were stopped, nobody took it
    with pytest.raises(LockLost):
        keeper.confirm("github.com/a")
    assert r.get("lock:github.com/a") is None  # a lost lock is never taken back
    with pytest.raises(LockLost):
        keeper.confirm("github.com/never-claimed")


def test_confirm_without_redis_refuses(redis_url: str) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    keeper = LockKeeper(dead, Scripts(dead), WID, 2)
    keeper.add(["github.com/a"], time.monotonic())
    keeper.check("github.com/a")  # the local view says ours...
    with pytest.raises(LockLost, match="could not be confirmed"):
        keeper.confirm("github.com/a")  # ...but a commit needs Redis to say so


# -- FencedStore -------------------------------------------------------------------------------


class Recorder:
    def __init__(self, fail_check: bool = False, fail_confirm: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_check = fail_check
        self.fail_confirm = fail_confirm

    def check(self) -> None:
        self.calls.append("check")
        if self.fail_check:
            raise LockLost("lost")

    def confirm(self) -> None:
        self.calls.append("confirm")
        if self.fail_confirm:
            raise LockLost("lost")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(StoreSettings(url=store_url, multipart_threshold_mb=5, multipart_part_mb=5))
    yield s
    s.close()


def test_every_write_is_checked_then_confirmed_at_commit(store: Store, tmp_path: Path) -> None:
    fence = Recorder()
    fenced = FencedStore(store, fence)
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100)
    fenced.put_bytes("octocat", b"[]", {"LastSync": "t"})
    fenced.put_file("octocat/a.zip", src, {"LastSync": "t"})
    fenced.replace_metadata("octocat", {"LastSync": "u"})
    assert fence.calls == ["check", "confirm"] * 3
    head = fenced.head("octocat")
    assert head is not None and head.get("LastSync") == "u"
    assert [i.key for i in fenced.list("octocat/")] == ["octocat/a.zip"]
    with fenced.open("octocat/a.zip", 90) as f:
        assert f.read() == b"x" * 10


@pytest.mark.parametrize("fail", ["check", "confirm"])
def test_a_failing_fence_writes_nothing(store: Store, tmp_path: Path, fail: str) -> None:
    store.put_bytes("octocat", b"old", {"LastSync": "old"})
    fence = Recorder(fail_check=fail == "check", fail_confirm=fail == "confirm")
    fenced = FencedStore(store, fence)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(11 * MIB))  # multipart on S3
    for write in (lambda: fenced.put_bytes("octocat", b"new", {"LastSync": "new"}),
                  lambda: fenced.put_file("octocat/a.bundle", src, {"LastSync": "new"}),
                  lambda: fenced.replace_metadata("octocat", {"LastSync": "new"})):
        with pytest.raises(LockLost):
            write()
    # A failing check stops a write before it starts; a failing confirm at its commit.
    assert "confirm" not in fence.calls if fail == "check" else fence.calls.count("confirm") == 3
    assert [i.key for i in store.list()] == ["octocat"]
    head = store.head("octocat")
    assert head is not None and head.get("LastSync") == "old"
    if isinstance(store, S3Store):
        assert not store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    else:
        assert isinstance(store, LocalStore)
        assert not [p for p in store.root.rglob("%tmp-*")]


def test_stop_fence_only_stops_when_asked() -> None:
    stop = threading.Event()
    fence = StopFence(stop)
    fence.check()
    fence.confirm()
    stop.set()
    with pytest.raises(Interrupted):
        fence.check()
    with pytest.raises(Interrupted):
        fence.confirm()


# -- end to end: a worker stopped mid-upload ---------------------------------------------------


@pytest.fixture
def fence_env(clean_env: None, redis_url: str, store_url: str, tmp_path: Path, forge: Forge,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    cfg = tmp_path / "fence.yaml"
    cfg.write_text("run:\n  lock_ttl_s: 2\n  grace_s: 20\n  claim_target_s: 1.0\n"
                   "store:\n  multipart_threshold_mb: 5\n  multipart_part_mb: 5\n"
                   "github:\n  backoff_s: 0.05\n")
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    monkeypatch.setenv("BULKBACKUP_CONFIG", str(cfg))
    return {**os.environ}


def uploading_bundle(store: Store, login: str, repo: str) -> bool:
    """Is the bundle of ``login/repo`` being uploaded right now (not yet visible)?"""
    key = f"{login}/{repo}.bundle"
    if isinstance(store, S3Store):
        uploads = store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=key)
        return bool(uploads.get("Uploads"))
    # The zip is stored first; once it is in place the next temp file is the bundle's.
    assert isinstance(store, LocalStore)
    incoming = store.root / INCOMING
    return ((store.root / login / f"{repo}.zip").exists()
            and not (store.root / login / f"{repo}.bundle").exists()
            and any(p.name.startswith("%tmp-") for p in incoming.iterdir()))


def stop_mid_upload(store: Store, run_pid: int, login: str, repo: str) -> int:
    """SIGSTOP the worker of run ``run_pid`` while the bundle of ``login/repo`` is on its way
    into the store; its pid."""
    deadline = time.monotonic() + 120
    while not uploading_bundle(store, login, repo):
        assert time.monotonic() < deadline, "no bundle upload seen"
        time.sleep(0.002)
    (worker,) = workers_of(run_pid)  # now, not earlier: the fork server's children settle
    os.kill(worker, signal.SIGSTOP)
    assert uploading_bundle(store, login, repo), "the worker stored its bundle before it stopped"
    return worker


def take_over(fence_env: dict[str, str], r: redis.Redis, login: str,
              change: Callable[[], None]) -> None:
    """While a worker holding ``login`` is paused: its lock and lease expire (now, instead
    of after lock_ttl_s: the paused worker cannot refresh them either way), ``change()``
    changes the user's repository, and a run on another host syncs the user."""
    member = f"github.com/{login}"
    r.pexpire(keys.lock(member), 1)
    r.zadd(keys.LEASES, {member: server_time(r)}, xx=True)
    wait_for(lambda: r.get(keys.lock(member)) is None, 30, "the lock to expire")
    change()
    second = start_run(fence_env, "--procs", "1", "--no-stats", host="hostB")
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0 and "1 users synced" in err, err


def resume(first: subprocess.Popen[str], worker: int) -> None:
    """Let the paused ``worker`` of run ``first`` go on, or kill the run if none paused."""
    if worker:
        os.kill(worker, signal.SIGCONT)
    else:
        first.kill()


def assert_lock_lost(first: subprocess.Popen[str]) -> None:
    """The resumed run ends well and says its write was refused."""
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert "1 locks lost" in err


def test_a_worker_stopped_mid_upload_cannot_land_a_stale_archive(
    fence_env: dict[str, str], store: Store, r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    # Random data does not compress: a zip and a bundle of ~24 MB each, multipart on S3.
    forge.add_user("racer", [RepoSpec("big", files={"blob.bin": os.urandom(24 * MIB)})])
    track(r, "racer")
    first = start_run(fence_env, "--procs", "1", "--no-stats", host="hostA")
    worker = 0
    try:
        worker = stop_mid_upload(store, first.pid, "racer", "big")
        take_over(fence_env, r, "racer", lambda: forge.push(
            "racer", "big", {"new.txt": b"pushed while the first worker slept\n"}))
    finally:
        resume(first, worker)
    assert_lock_lost(first)  # its upload was refused at the commit
    # The stored archives are the newer ones: the bundle's refs are the pushed ones (and the
    # zip, stored by both workers before the pause, has the pushed file).
    # The newest part of the archive: the full bundle, or an increment on it when the first
    # worker's full bundle had landed before it stopped.
    bundle = tmp_path / "stored.bundle"
    bundle.write_bytes(read(store, latest_archive(store, "racer", "big").parts[-1].key))
    git("init", "-q", str(tmp_path / "verifier"))
    heads = git("bundle", "list-heads", str(bundle), cwd=tmp_path / "verifier")
    stored = {ref: sha for sha, ref in (line.split() for line in heads.splitlines())}
    source = forge.root / "git" / "racer" / "big.git"
    assert stored["refs/heads/main"] == git("rev-parse", "refs/heads/main", cwd=source).strip()
    names = zipfile.ZipFile(io.BytesIO(read(store, "racer/big.zip"))).namelist()
    assert "big-main/new.txt" in names
    if isinstance(store, S3Store):
        assert not store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    else:
        assert isinstance(store, LocalStore)
        assert not [p for p in store.root.rglob("%tmp-*")]


def test_a_worker_stopped_mid_increment_cannot_commit_a_stale_one(
    fence_env: dict[str, str], store: Store, r: redis.Redis, forge: Forge
) -> None:
    """The increment's writes (part, then the full bundle's `Increments`) are fenced as a full
    archive's: a worker paused in its fetch while another host stores the newer change
    never commits increment 2 on top of it."""
    forge.add_user("inc", [RepoSpec("r", files={"a.txt": b"a\n"})])
    track(r, "inc")
    done = start_run(fence_env, "--procs", "1", "--no-stats", host="hostA")
    _, err = done.communicate(timeout=240)
    assert done.returncode == 0 and "1 users synced" in err, err
    forge.push("inc", "r", {"b.txt": b"first change\n"})
    forge.stall_s = 6
    forge.set_stall("inc", "r", True)
    r.zadd("tracked", {"github.com/inc": 0})  # due again
    forge.reset_counters()
    first = start_run(fence_env, "--procs", "1", "--no-stats", host="hostA")
    worker = 0
    try:
        wait_for(lambda: forge.counters["upload_pack"] >= 1, 60, "the increment's fetch")
        (worker,) = workers_of(first.pid)
        os.kill(worker, signal.SIGSTOP)
        forge.set_stall("inc", "r", False)
        take_over(fence_env, r, "inc", lambda: forge.push("inc", "r", {"c.txt": b"second\n"}))
    finally:
        resume(first, worker)
    assert_lock_lost(first)
    head = store.head("inc/r.bundle")
    assert head is not None and head.get("Increments") == "1"
    archive = latest_archive(store, "inc", "r")
    assert len(archive.parts) == 2  # no increment 2 from the paused worker
    heads = store.read_bytes(archive.parts[-1].key).split(b"\n\n", 1)[0].decode()
    source = forge.root / "git" / "inc" / "r.git"
    assert f"{git('rev-parse', 'refs/heads/main', cwd=source).strip()} refs/heads/main" in heads
