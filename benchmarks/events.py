"""Reading GH Archive hours (`bulkbackup events`) against `gzip -dc` of the same files.

    python -m benchmarks.events [--events 150000] [--hours 2] [--tracked 20000]

Generates hour files with GH Archive's type mix (about half PushEvent; the rest creates,
deletes, forks, releases, and types that change nothing: watches, issues, comments, pull
requests) over 100 000 owners, of whom --tracked are tracked in a private redis-server, then
times `gzip -dc FILE > /dev/null` (the decompression floor) and `bulkbackup events FILE...` on
the same files: events/s of each, their ratio (by CPU time, process start included), and the
peak RSS of `events` (VmHWM) for one hour and for all of them (flat memory: equal).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bulkbackup.testing import gharchive as gh
from bulkbackup.testing.services import redis_server

ROOT = Path(__file__).resolve().parent.parent
OWNERS = 100_000
MIX = [("PushEvent", 50), ("CreateEvent", 10), ("WatchEvent", 10), ("IssueCommentEvent", 8),
       ("PullRequestEvent", 8), ("IssuesEvent", 4), ("PullRequestReviewEvent", 4),
       ("DeleteEvent", 3), ("ForkEvent", 2), ("ReleaseEvent", 1)]
# The command, then its peak resident memory (VmHWM: since its exec; ru_maxrss would count
# the process it was forked from).
MEASURED = """import sys
from bulkbackup.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    print(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
sys.exit(rc)
"""


def hour_events(rng: random.Random, hour: datetime, n: int) -> Iterator[dict[str, Any]]:
    kinds = [k for k, weight in MIX for _ in range(weight)]
    commit = {"sha": "c" * 40, "author": {"email": "a@example.com", "name": "A"},
              "message": "m" * 120, "distinct": True}
    for _ in range(n):
        kind = rng.choice(kinds)
        repo = f"user{rng.randrange(OWNERS)}/repo{rng.randrange(20)}"
        if kind == "PushEvent":
            e = gh.push(repo, at=hour)
            e["payload"]["commits"] = [commit] * rng.randint(1, 3)
        elif kind == "ForkEvent":
            e = gh.fork(repo, f"user{rng.randrange(OWNERS)}/{repo.split('/')[1]}", at=hour)
        elif kind in ("CreateEvent", "DeleteEvent"):
            e = gh.create(repo, rng.choice(["branch", "tag", "repository"]), "dev", at=hour)
            e["type"] = kind
        else:
            e = gh.event(kind, repo, payload={"body": "z" * rng.choice([200, 800, 3000])},
                         at=hour)
        yield e


def cpu_s(cmd: list[str], env: dict[str, str], stdout: int | None = None) -> tuple[float, str]:
    """(user + system CPU seconds of the child, its standard output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}: {proc.stderr}")
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used, proc.stdout or ""


def measure(tmp: Path, url: str, n_events: int, n_hours: int, n_tracked: int) -> None:
    import redis

    from bulkbackup.queue import keys

    rng = random.Random(22)
    first = datetime(2024, 1, 1, tzinfo=UTC)
    files = []
    for h in range(n_hours):
        hour = first + timedelta(hours=h)
        path = tmp / f"{gh.hour_name(hour)}.json.gz"
        gh.write_hour(path, gh.lines_of(hour_events(rng, hour, n_events)), compresslevel=6)
        files.append(path)
    r = redis.Redis.from_url(url)
    r.zadd(keys.TRACKED, {keys.member(f"user{i}"): 1.0 for i in range(n_tracked)})
    cfg = tmp / "config.yaml"
    cfg.write_text("{}\n")
    env = {**os.environ, "REDIS_URL": url, "BULKBACKUP_CONFIG": str(cfg),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    total = n_events * n_hours
    with open(os.devnull, "wb") as null:
        gz_s = sum(cpu_s(["gzip", "-dc", str(f)], env, null.fileno())[0] for f in files)
    started = time.perf_counter()
    ev_s, out = cpu_s([sys.executable, "-c", MEASURED, "events", *map(str, files)], env)
    wall_s = time.perf_counter() - started
    peak_all = int(out.split()[-1])
    r.delete(keys.EVENTS_HOURS)
    _, out = cpu_s([sys.executable, "-c", MEASURED, "events", str(files[0])], env)
    peak_one = int(out.split()[-1])
    print(f"{n_hours} hours of {n_events} events ({sum(f.stat().st_size for f in files) >> 20}"
          f" MB gzip), {n_tracked} of {OWNERS} owners tracked")
    print(f"gzip -dc           {total / gz_s:12,.0f} events/s ({gz_s:.2f} s CPU)")
    print(f"bulkbackup events  {total / ev_s:12,.0f} events/s ({ev_s:.2f} s CPU, "
          f"{wall_s:.2f} s wall): ratio {gz_s / ev_s:.2f}")
    print(f"peak RSS of events: {peak_one / 1024:.1f} MB for 1 hour, "
          f"{peak_all / 1024:.1f} MB for {n_hours}")
    print(f"owners marked due: {r.zcard(keys.EVENTS_DUE)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=150_000, help="events per hour")
    ap.add_argument("--hours", type=int, default=2)
    ap.add_argument("--tracked", type=int, default=20_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    try:
        with redis_server(tmp / "redis") as url:
            measure(tmp, url, args.events, args.hours, args.tracked)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
