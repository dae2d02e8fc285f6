"""Ingest throughput against `redis-cli --pipe` loading the same members.

    python -m benchmarks.ingest [--users 2000000]

Generates a dump (realistic logins, ~0.5% bad lines), starts a private redis-server, and loads
the members three ways, flushing between: `redis-cli --pipe` of plain `ZADD tracked NX`
commands (the old ceiling: what Redis does without the case-insensitive check), `redis-cli
--pipe` of the very `EVALSHA track.lua` commands ingest sends (the ceiling for the same server
work: one account, one member), and `bulkbackup ingest`. Prints the rates, both ratios, and the
peak RSS of the ingest process for N and N/4 users (constant memory means the two are equal).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from bulkbackup.testing.services import redis_server

ROOT = Path(__file__).resolve().parent.parent


def realistic_login(rng: random.Random, i: int) -> str:
    words = ["dev", "code", "john", "maria", "lab", "data", "ops", "sam", "li", "wang", "x"]
    style = rng.random()
    if style < 0.4:
        base = rng.choice(words) + rng.choice(words)
    elif style < 0.7:
        base = rng.choice(words) + "-" + rng.choice(words)
    else:
        base = "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(3, 12)))
    return f"{base}{i}"[:39]


def make_dump(path: Path, n: int) -> int:
    """Write n valid users plus some bad lines; returns the number of bad lines."""
    rng = random.Random(42)
    bad = 0
    with path.open("w") as f:
        for i in range(n):
            login = realistic_login(rng, i)
            f.write(f'{{"login": "{login}", "id": {i}, "type": "User"}}\n')
            if rng.random() < 0.005:
                bad += 1
                f.write(rng.choice(['{"login": "bad.login"}\n', "{broken\n", "\n", '{"id": 1}\n']))
    return bad


def dump_batches(dump: Path, batch: int) -> Iterator[list[bytes]]:
    """The valid logins of ``dump``, ``batch`` at a time (what ingest accepts)."""
    import orjson

    from bulkbackup.names import is_login

    logins: list[bytes] = []
    with dump.open("rb") as src:
        for line in src:
            try:
                login = orjson.loads(line).get("login")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if is_login(login):
                logins.append(login.encode())
                if len(logins) == batch:
                    yield logins
                    logins = []
    if logins:
        yield logins


def resp_commands(dump: Path, out: Path, batch: int = 1000) -> None:
    """The same members as ZADD NX commands in RESP, for `redis-cli --pipe`."""
    with out.open("wb") as f:
        for logins in dump_batches(dump, batch):
            members = [b"github.com/" + login for login in logins]
            f.write(b"*%d\r\n$4\r\nZADD\r\n$7\r\ntracked\r\n$2\r\nNX\r\n" % (3 + 2 * len(members)))
            f.write(b"".join(b"$4\r\n-inf\r\n$%d\r\n%s\r\n" % (len(m), m) for m in members))


def resp_track_commands(dump: Path, out: Path, sha: str) -> None:
    """The same logins as ingest's `EVALSHA track.lua` commands, for `redis-cli --pipe`."""
    from bulkbackup.queue.ingest import HEAD_ARGS, _head
    from bulkbackup.queue.tracked import TRACK_BATCH

    head = _head(sha)
    with out.open("wb") as f:
        for logins in dump_batches(dump, TRACK_BATCH):
            f.write(b"*%d\r\n" % (HEAD_ARGS + len(logins)) + head)
            f.write(b"".join(b"$%d\r\n%s\r\n" % (len(m), m) for m in logins))


def timed_child(
    cmd: list[str], env: dict[str, str], stdin: Path | None = None
) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one child process, measured with wait4."""
    started = time.perf_counter()
    with (stdin.open("rb") if stdin else open(os.devnull, "rb")) as inp:
        proc = subprocess.Popen(cmd, env=env, stdin=inp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2_000_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        with redis_server(tmp / "redis") as url:
            measure(tmp, int(urlsplit(url).port or 0), args.users)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(tmp: Path, port: int, users: int) -> None:
    cli = ["redis-cli", "-p", str(port)]
    cfg = tmp / "config.yaml"
    cfg.write_text("{}\n")
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "BULKBACKUP_CONFIG": str(cfg)}
    rss: dict[int, int] = {}
    for n in (users // 4, users):
        dump = tmp / f"users-{n}.json"
        bad = make_dump(dump, n)
        resp = tmp / f"users-{n}.resp"
        resp_commands(dump, resp)
        subprocess.run([*cli, "flushall"], check=True, stdout=subprocess.DEVNULL)
        base_s, _ = timed_child([*cli, "--pipe"], env, stdin=resp)
        loaded = int(subprocess.check_output([*cli, "zcard", "tracked"]))
        subprocess.run([*cli, "flushall"], check=True, stdout=subprocess.DEVNULL)
        sha = subprocess.check_output([*cli, "script", "load", (ROOT / "bulkbackup" / "lua" /
                                                                "track.lua").read_text()])
        same = tmp / f"users-{n}.track.resp"
        resp_track_commands(dump, same, sha.decode().strip())
        same_s, _ = timed_child([*cli, "--pipe"], env, stdin=same)
        subprocess.run([*cli, "flushall"], check=True, stdout=subprocess.DEVNULL)
        ours_s, rss[n] = timed_child([sys.executable, "-m", "bulkbackup", "ingest", str(dump)], env)
        ingested = int(subprocess.check_output([*cli, "zcard", "tracked"]))
        assert loaded == ingested, (loaded, ingested)
        print(f"N={n:>9}: redis-cli --pipe ZADD {n / base_s:>9,.0f} users/s | the same "
              f"track.lua {n / same_s:>9,.0f} users/s | bulkbackup ingest {n / ours_s:>9,.0f} "
              f"users/s (process start included) | ratio {base_s / ours_s:.2f} to ZADD, "
              f"{same_s / ours_s:.2f} to the same script | ingest peak RSS "
              f"{rss[n] / 1024:.1f} MB | {bad} bad lines")
    print(f"peak RSS N/4 -> N: {rss[users // 4] / 1024:.1f} MB -> {rss[users] / 1024:.1f} MB")


if __name__ == "__main__":
    main()
