"""`bulkbackup run`: the pool, with real Redis, the GitHub stand-in, real git, local store."""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import redis

from bulkbackup import config
from bulkbackup.run.reports import GivenBack, Lost
from bulkbackup.run.worker import Worker, WorkerArgs
from bulkbackup.store import tempfiles
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port, start_moto
from tests.helpers import (
    all_synced,
    expire_claim,
    next_second,
    start_run,
    track,
    wait_for,
    workers_of,
)


def run_env(
    clean_env: None, redis_url: str, tmp_path: Path, forge: Forge,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    store = tmp_path / "backup" / "github.com"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("run:\n  lock_ttl_s: 2\n  grace_s: 20\n  claim_target_s: 1.0\n"
                   "github:\n  backoff_s: 0.05\n")
    monkeypatch.setenv("BULKBACKUP_STORE", str(store))
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    monkeypatch.setenv("BULKBACKUP_CONFIG", str(cfg))
    return {**os.environ}


def test_run_drains_tracked_then_runs_stats(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    logins = [f"user{i}" for i in range(12)]
    for i, login in enumerate(logins):
        forge.add_user(login, [RepoSpec(f"repo{j}") for j in range(i % 3)])
    track(r, *logins)
    start = time.time() - 1
    proc = start_run(run_env, "--procs", "3")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "12 users synced" in err
    assert all_synced(r, logins, start)
    assert r.zcard("bulkbackup:leases") == 0 and not r.keys("lock:*")
    assert "repositories.archived" in out  # the stats pass ran and printed its table
    assert forge.counters["info_refs"] == sum(i % 3 for i in range(12))  # one clone a repo
    assert r.hgetall("bulkbackup:lastrun")["users"] == "12"


def test_max_users(run_env: dict[str, str], r: redis.Redis, forge: Forge) -> None:
    logins = [f"m{i}" for i in range(10)]
    for login in logins:
        forge.add_user(login, [])
    track(r, *logins)
    proc = start_run(run_env, "--procs", "2", "--max-users", "4", "--no-stats")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "4 users synced" in err
    assert r.zcount("tracked", "-inf", "-inf") == 6


def test_two_runs_on_two_hosts_share_the_work(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    logins = [f"shared{i}" for i in range(30)]
    for login in logins:
        forge.add_user(login, [RepoSpec("only")])
    track(r, *logins)
    start = time.time() - 1
    a = start_run(run_env, "--procs", "2", "--no-stats", host="hostA")
    b = start_run(run_env, "--procs", "2", "--no-stats", host="hostB")
    _, err_a = a.communicate(timeout=180)
    _, err_b = b.communicate(timeout=180)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert all_synced(r, logins, start)
    # Every user exactly once: one clone of each user's only repository in total.
    assert all(forge.clones(x, "only") == 1 for x in logins)
    done_a = int(err_a.split(" users synced")[0].rsplit(" ", 1)[-1])
    done_b = int(err_b.split(" users synced")[0].rsplit(" ", 1)[-1])
    assert done_a + done_b == 30


def test_sigkill_of_a_worker_loses_no_user(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    forge.stall_s = 3
    logins = [f"k{i}" for i in range(6)]
    for login in logins:
        forge.add_user(login, [RepoSpec("slow", stall=True)])
    track(r, *logins)
    start = time.time() - 1
    proc = start_run(run_env, "--procs", "2", "--no-stats")
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="a clone in progress")
    victims = workers_of(proc.pid)
    assert victims, "no worker process found"
    os.kill(victims[0], signal.SIGKILL)
    for login in logins:  # killed mid-clone is the point; the users after it need no stall
        forge.set_stall(login, "slow", False)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert all_synced(r, logins, start)


def test_a_stopped_worker_writes_nothing_for_users_it_lost(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    forge.stall_s = 4
    forge.add_user("sleepy", [RepoSpec("slow", stall=True)])
    track(r, "sleepy")
    start = time.time() - 1
    proc = start_run(run_env, "--procs", "2", "--no-stats")
    wait_for(lambda: r.get("lock:github.com/sleepy") is not None, what="a claim")
    owner = r.get("lock:github.com/sleepy")
    wait_for(lambda: forge.counters["upload_pack"] + forge.counters["info_refs"] >= 1,
             what="the clone to start")
    # Stop every worker except... we cannot tell which one holds the lock from outside, so
    # stop them all; the run's parent notices nothing. Resume one of them first.
    workers = workers_of(proc.pid)
    for w in workers:
        os.kill(w, signal.SIGSTOP)
    expire_claim(r, "github.com/sleepy")  # now, not after lock_ttl_s: nobody can refresh it
    # The paused clone stays stalled; the next one (the user claimed again) is not.
    forge.set_stall("sleepy", "slow", False)
    for w in workers:
        os.kill(w, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "1 locks lost" in err
    assert all_synced(r, ["sleepy"], start)
    assert r.get("lock:github.com/sleepy") != owner


def test_rate_limited_forge_run_completes_without_errors(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    logins = [f"rl{i}" for i in range(5)]
    for login in logins:
        forge.add_user(login, [RepoSpec("a")])
    track(r, *logins)
    forge.rate_limit(requests=4, reset_in_s=2)
    start = time.time() - 1
    proc = start_run(run_env, "--procs", "2", "--no-stats")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "5 users synced" in err and "0 users with errors" in err
    assert all_synced(r, logins, start)


def test_sigterm_stops_within_grace_and_leaves_no_partial_object(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    forge.stall_s = 2
    logins = [f"t{i}" for i in range(8)]
    for login in logins:
        forge.add_user(login, [RepoSpec("slow", stall=True), RepoSpec("quick")])
    track(r, *logins)
    proc = start_run(run_env, "--procs", "2", "--no-stats")
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="work in progress")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 20 + 5  # grace_s from run_env, plus shutdown
    store = tmp_path / "backup" / "github.com"
    leftovers = [p for p in store.rglob("*") if "%tmp" in p.name]
    assert not leftovers
    subprocess.run(["git", "init", "-q", str(tmp_path / "verifier")], check=True)
    for bundle in store.rglob("*.bundle"):
        if bundle.stat().st_size:
            subprocess.run(["git", "bundle", "verify", str(bundle)], check=True,
                           capture_output=True, cwd=tmp_path / "verifier")
    # Users not finished are due again at once: given back with their old score.
    assert r.zcount("tracked", "+inf", "+inf") == 0
    assert not r.keys("lock:*")


def test_run_rebuilds_tracked_from_the_store_when_it_is_missing(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    forge.add_user("back", [RepoSpec("a")])
    forge.add_user("again", [])
    track(r, "back", "again")
    assert start_run(run_env, "--procs", "1", "--no-stats").wait(120) == 0
    r.flushall()  # Redis lost everything; the store still has both users
    next_second()  # the rebuilt scores (their sync times) must be before this run's start
    proc = start_run(run_env, "--procs", "1", "--no-stats")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "rebuilt 2 users from the store" in err
    assert r.zcard("tracked") == 2 and "2 users synced" in err


def test_redis_outage_mid_run_loses_no_user(
    run_env: dict[str, str], forge: Forge, tmp_path: Path
) -> None:
    """Redis stops answering (SIGSTOP) for longer than the lock TTL while users are in flight:
    workers retry, locks they could not refresh are abandoned, and the run still completes."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port, decode_responses=True)
        wait_for(lambda: _pings(r), what="redis-server")
        forge.stall_s = 2
        logins = [f"o{i}" for i in range(6)]
        for login in logins:
            forge.add_user(login, [RepoSpec("slow", stall=True)])
        track(r, *logins)
        cfg = tmp_path / "outage.yaml"
        cfg.write_text("redis:\n  socket_timeout_s: 1\nrun:\n  lock_ttl_s: 2\n")
        env = {**run_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
               "BULKBACKUP_CONFIG": str(cfg)}
        start = time.time() - 1
        proc = start_run(env, "--procs", "2", "--no-stats")
        wait_for(lambda: forge.counters["upload_pack"] >= 1, what="work in progress")
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(4)  # twice the lock TTL: every lock held now expires
        os.kill(server.pid, signal.SIGCONT)
        for login in logins:  # the outage is over: the users left need no stall
            forge.set_stall(login, "slow", False)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        # The outage was seen and survived: claims retried, refreshes failed, locks lost.
        assert "lock refresh failed" in err or "redis error during" in err, err
        assert all_synced(r, logins, start)
        assert not r.keys("lock:*") and r.zcard("bulkbackup:leases") == 0
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(10)


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


def test_a_store_that_cannot_be_used_fails_the_run_in_one_line(
    run_env: dict[str, str], r: redis.Redis, s3_endpoint: str, tmp_path: Path
) -> None:
    track(r, "someone")
    cfg = tmp_path / "nobucket.yaml"
    cfg.write_text("store:\n  create_bucket: false\n")
    env = {**run_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           "BULKBACKUP_STORE": "s3://no-such-bucket", "BULKBACKUP_CONFIG": str(cfg)}
    proc = start_run(env, "--procs", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2  # a configuration error: systemd must not restart it
    last = err.strip().splitlines()[-1]
    assert last.startswith("bulkbackup: error: bucket no-such-bucket does not exist"), err
    assert r.zscore("tracked", "github.com/someone") == float("-inf")  # nothing claimed


def test_a_user_that_always_fails_is_left_for_the_next_run(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    # A plain file where the user's folder belongs: every store write for `poison` fails.
    root = tmp_path / "backup" / "github.com"
    root.mkdir(parents=True)
    (root / "poison").write_text("not a folder\n")
    forge.add_user("poison", [])
    forge.add_user("fine", [])
    track(r, "poison", "fine")
    before = time.time()
    proc = start_run(run_env, "--procs", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.count("given back for another attempt") == 2
    assert "failed 3 times in a row: left for the next run" in err
    assert "1 left for the next run" in err
    assert err.strip().splitlines()[-1] == (
        "bulkbackup: error: 1 users failed 3 times on store or Redis errors or rate limits and "
        "are left for "
        "the next run (see the log)")
    assert all_synced(r, ["fine"], math.floor(before))
    assert r.zscore("tracked", "github.com/poison") == float("-inf")  # never synced, truly
    deferred = r.keys("bulkbackup:deferred:*")
    assert len(deferred) == 1 and r.smembers(deferred[0]) == {"github.com/poison"}
    assert r.hlen("bulkbackup:failures") == 0 and r.zcard("bulkbackup:leases") == 0
    # Not lost: once the store is repaired, the next run syncs it.
    (root / "poison").unlink()
    proc = start_run(run_env, "--procs", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert all_synced(r, ["poison"], math.floor(before))


def test_a_store_outage_mid_run_passes_and_leaves_no_user_behind(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    # A private moto_server, so that this test can stop and start it.
    port = free_port()
    log = tmp_path / "moto.log"
    moto = start_moto(port, log)
    endpoint = f"http://127.0.0.1:{port}"
    env = {**run_env, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "BULKBACKUP_STORE": "s3://github.com"}
    env.pop("AWS_ENDPOINT_URL", None)
    forge.stall_s = 1
    logins = [f"o{i}" for i in range(8)]
    for login in logins:
        forge.add_user(login, [RepoSpec("r", stall=True)])
    track(r, *logins)
    start = math.floor(time.time())
    proc = start_run(env, "--procs", "2", "--no-stats")
    try:
        wait_for(lambda: r.zcount("tracked", start, "(inf") >= 1, 60, "a first user")
        moto.kill()
        moto.wait(10)
        wait_for(lambda: r.hlen("bulkbackup:failures") >= 1, 120, "a failed attempt")
        moto = start_moto(port, log)  # empty again: the bucket is made anew
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket="github.com")
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
        moto.terminate()
        moto.wait(10)
    assert proc.returncode == 0, err
    assert "given back for another attempt" in err
    assert " 0 left for the next run" in err
    assert all_synced(r, logins, start)
    assert r.hlen("bulkbackup:failures") == 0


def test_a_lock_lost_before_a_give_back_counts_as_lost(
    clean_env: None, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A give-back (after a failure, or plain) that finds the lock no longer ours changes
    nothing and reports the user lost, not given back."""
    monkeypatch.setenv("BULKBACKUP_STORE", str(tmp_path / "store"))
    settings = config.load()
    reader, writer = multiprocessing.Pipe(duplex=False)
    graceful = multiprocessing.RawValue(ctypes.c_bool, False)
    budget = multiprocessing.Value("q", -1)
    args = WorkerArgs(settings=settings, index=0, worker_id="1.0.here", run_start=time.time(),
                      clock_offset_s=0.0, procs=1)
    worker = Worker(args, writer, graceful, budget, os.getppid())
    track(r, "failing", "plain", "fine")
    assert len(worker.queue.claim_due(3).claimed) == 3  # held from now on
    r.set("lock:github.com/failing", "2.0.elsewhere")  # another owner took it over
    r.delete("lock:github.com/plain")  # expired
    worker._give_back("github.com/failing", "store failed: boom")
    worker._give_back("github.com/plain")
    worker._give_back("github.com/fine", "store failed: boom")
    reports = [reader.recv() for _ in range(3)]
    assert reports == [Lost(0, "failing"), Lost(0, "plain"), GivenBack(0, "fine")]
    assert r.get("lock:github.com/failing") == "2.0.elsewhere"  # untouched: not ours
    assert r.zscore("tracked", "github.com/failing") == float("inf")  # still the other's claim
    assert r.hget("bulkbackup:failures", "github.com/failing") is None
    assert r.zscore("tracked", "github.com/fine") == float("-inf")  # given back
    worker.queue.close()


def test_a_run_removes_the_temp_files_dead_writers_left_in_the_store(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    """A put killed mid-write leaves its temp file in the local store; the next run removes
    it at start, and keeps one whose writer still lives."""
    incoming = tmp_path / "backup" / "github.com" / tempfiles.INCOMING
    incoming.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = incoming / f"{tempfiles.PREFIX}{tempfiles.HOST}-{dead.pid}-0123abcd"
    live = incoming / f"{tempfiles.PREFIX}{tempfiles.HOST}-{os.getpid()}-4567abcd"
    stale.write_bytes(b"half a bundle")
    live.write_bytes(b"a write in progress")
    proc = start_run(run_env, "--procs", "1", "--no-stats")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not stale.exists() and live.exists()
    assert "removed 1 temp files of the store left by killed writers" in err
