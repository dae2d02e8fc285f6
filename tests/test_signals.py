"""`bulkbackup run` under signals and losses from outside: the whole process group
terminated, the parent killed, killed workers' folders, Redis flushed mid-run."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from bulkbackup.run.parentdeath import PARENT_DEATH_SIGNAL
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import (
    all_synced,
    next_second,
    run_config,
    start_run,
    track,
    wait_for,
    workers_of,
)


@pytest.fixture
def run_env(run_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """conftest's, with the workers' folders in tmp_path (the cases look into them)."""
    Path(run_env["BULKBACKUP_CONFIG"]).write_text(
        run_config(f"  work_dir: {tmp_path / 'work'}\n"))
    return run_env


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def armed(pid: int) -> bool:
    """Has worker ``pid`` started watching for its parent's death (its handler of
    PARENT_DEATH_SIGNAL is installed, right after it read its parent's pid)?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith("SigCgt:")), 16)
    return bool(caught >> (PARENT_DEATH_SIGNAL - 1) & 1)


def no_claims_left(r: redis.Redis) -> bool:
    return (not r.keys("lock:*") and r.zcard("bulkbackup:leases") == 0
            and r.zcount("tracked", "+inf", "+inf") == 0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_stops_gracefully_and_exits_130(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, signum: signal.Signals
) -> None:
    """Ctrl-C in a terminal, systemd's KillMode=control-group, `kill -- -PGID` and `timeout`
    signal every process of the run, the fork server included: a graceful stop all the same,
    and exit 130 as `sync` (the run did not finish its work)."""
    forge.stall_s = 2
    logins = [f"g{i}" for i in range(8)]
    for login in logins:
        forge.add_user(login, [RepoSpec("slow", stall=True)])
    track(r, *logins)
    start = math.floor(time.time())
    proc = start_run(run_env, "--procs", "2", "--no-stats", new_session=True)
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="work in progress")
    workers = workers_of(proc.pid)
    assert workers
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("bulkbackup: interrupted"), err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "stopping: in-flight users have 20s to finish" in err
    # The users in flight finished; the others were given back with their scores.
    scores = r.zmscore("tracked", [f"github.com/{x}" for x in logins])
    assert any(s is not None and start <= s < math.inf for s in scores), err
    assert no_claims_left(r)
    assert not any(alive(w) for w in workers)


def test_workers_of_a_killed_parent_give_their_users_back_and_exit(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    # Long enough that no user can finish before the parent is killed, however slowly this
    # test sees the first clone start on a loaded machine (it failed twice with 10 s, once
    # a user had finished); the forge ends its stalls when it stops, so this costs nothing.
    forge.stall_s = 60
    logins = [f"o{i}" for i in range(6)]
    for login in logins:
        forge.add_user(login, [RepoSpec("slow", stall=True)])
    track(r, *logins)
    proc = start_run(run_env, "--procs", "2", "--no-stats", new_session=True)
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="a clone in progress")
    # Both workers started: one of them can be busy cloning while the other is still
    # importing, and a worker whose fork server dies before it reads its parent's pid never
    # notices (a known race of worker_main, not what this case is about).
    wait_for(lambda: len(ws := workers_of(proc.pid)) == 2 and all(map(armed, ws)), 60,
             "both workers watching their parent")
    workers = workers_of(proc.pid)
    assert r.keys("lock:*")
    proc.kill()
    proc.wait(30)
    wait_for(lambda: not any(alive(w) for w in workers), 60, "the workers to exit")
    _, err = proc.communicate(timeout=60)  # every writer of the stderr pipe is gone
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "parent process is gone" in err
    # Claimable at once: no lock to wait for, every score back where it was.
    assert no_claims_left(r)
    assert r.zcount("tracked", "-inf", "-inf") == len(logins)


def test_workers_forked_as_the_run_dies_exit_too(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    """The run killed the moment its workers are forked, before they could arm their
    parent-death signal or read their parent's pid: they are re-parented (to pid 1 or a
    subreaper) and must still see that the run is gone, give back what they hold and exit."""
    forge.stall_s = 60
    logins = [f"f{i}" for i in range(4)]
    for login in logins:
        forge.add_user(login, [RepoSpec("slow", stall=True)])
    track(r, *logins)
    proc = start_run(run_env, "--procs", "2", "--no-stats", new_session=True)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = workers_of(proc.pid)
        time.sleep(0.002)
    assert len(workers) == 2, "no workers forked"
    proc.kill()
    proc.wait(30)
    wait_for(lambda: not any(alive(w) for w in workers), 60, "the workers to exit")
    proc.communicate(timeout=60)
    wait_for(lambda: no_claims_left(r), 30, "every claim given back or expired")
    assert r.zcount("tracked", "-inf", "-inf") == len(logins)


def work_folders(base: Path) -> set[str]:
    return {p.name for p in base.glob("bulkbackup-*")} if base.exists() else set()


def test_a_killed_workers_folder_is_removed_at_the_next_start_and_live_ones_kept(
    run_env: dict[str, str], r: redis.Redis, forge: Forge, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    forge.stall_s = 8  # long enough to kill one clone and start a second run beside it
    forge.add_user("u1", [RepoSpec("slow", stall=True)])
    forge.add_user("u2", [RepoSpec("slow", stall=True)])
    track(r, "u1", "u2")
    live = start_run(run_env, "--procs", "2", "--no-stats")
    try:
        wait_for(lambda: forge.counters["upload_pack"] >= 2, what="two clones in progress")
        owners = {int((p / ".owner").read_text().split()[0]): p.name
                  for p in work.glob("bulkbackup-*")}
        victim = workers_of(live.pid)[0]
        stale = owners[victim]
        os.kill(victim, signal.SIGKILL)  # mid-clone: its folder holds a partial mirror
        wait_for(lambda: len(work_folders(work)) == 3, what="the replacement's folder")
        in_use = work_folders(work) - {stale}
        cleaner = start_run(run_env, "--procs", "1", "--no-stats", host="hostC")
        wait_for(lambda: stale not in work_folders(work), what="the stale folder's removal")
        assert live.poll() is None
        assert in_use <= work_folders(work)  # the live run's folders are kept
        for login in ("u1", "u2"):  # the killed worker's user, claimed again, needs no stall
            forge.set_stall(login, "slow", False)
        _, err = cleaner.communicate(timeout=120)
        assert cleaner.returncode == 0, err
        assert "removed 1 work folders left by killed processes" in err
        _, err = live.communicate(timeout=120)
        assert live.returncode == 0, err
    finally:
        live.kill()
    assert work_folders(work) == set()


def test_a_flushed_redis_mid_run_is_rebuilt_and_lost_users_fail_the_run(
    run_env: dict[str, str], r: redis.Redis, forge: Forge
) -> None:
    # Two users in the store from an earlier run; six never synced.
    forge.add_user("kept1", [RepoSpec("a")])
    forge.add_user("kept2", [])
    track(r, "kept1", "kept2")
    assert start_run(run_env, "--procs", "1", "--no-stats").wait(120) == 0
    forge.reset_counters()
    forge.stall_s = 2
    fresh = [f"new{i}" for i in range(6)]
    for login in fresh:
        forge.add_user(login, [RepoSpec("slow", stall=True)])
    track(r, *fresh)
    r.zadd("tracked", {"github.com/kept1": 1, "github.com/kept2": 1})  # both due again
    next_second()  # rebuilt scores of this run's syncs are at or after its start
    start = math.floor(time.time())
    proc = start_run(run_env, "--procs", "1", "--no-stats")
    wait_for(lambda: forge.counters["upload_pack"] >= 1, what="work in progress")
    r.flushall()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    assert "rebuilding it from the store" in err
    # What the store has is back and synced in this run, the older users included.
    assert all_synced(r, ["kept1", "kept2"], start)
    lost = 8 - r.zcard("tracked")
    assert lost >= 4, err  # one user at most was synced before the flush
    assert err.strip().splitlines()[-1] == (
        f"bulkbackup: error: {lost} users were lost from `tracked` mid-run (Redis flushed or "
        "restarted without persistence) and are not in the store: ingest them again")
    assert no_claims_left(r)
