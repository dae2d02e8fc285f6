"""Redis memory per user, for sizing the Redis that holds `tracked` (see jobs/README.md).

    python jobs/redis_memory.py [--users 1000000]

Starts a private redis-server (no persistence) on a free port, writes a dump of N distinct,
realistic logins, loads it with the project's own `python -m bulkbackup ingest` (an empty
config file, so only REDIS_URL matters), then fills the stats cache `bulkbackup:syncd`
(login -> "12 1 0 0", the shape completion and the stats pass write) for the same logins.
For each key it prints the `INFO memory` used_memory delta per user and
`MEMORY USAGE key SAMPLES 0` (every element counted, not the default 5-element estimate) / N.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from bulkbackup.testing.services import start_redis

FIRST = ["john", "maria", "alex", "wei", "li", "anna", "david", "sam", "ahmed", "yuki", "olga",
         "carlos", "priya", "tom", "lucas", "emma", "ivan", "chen", "sara", "max", "nina",
         "omar", "kim", "leo", "jose", "mehmet", "raj", "paul", "eva", "dmitry"]
LAST = ["smith", "wang", "garcia", "kumar", "mueller", "rossi", "silva", "ivanov", "nguyen",
        "tanaka", "kowalski", "jones", "lee", "martin", "zhang", "ali", "novak", "brown",
        "dubois", "santos", "kim", "yilmaz", "petrov", "johansson", "costa", "patel"]
WORDS = ["dev", "code", "hacker", "ninja", "lab", "data", "ops", "cloud", "pixel", "byte",
         "rust", "py", "js", "web", "bot", "net", "git", "io", "ai", "geek", "studio", "hq"]


def realistic_login(rng: random.Random) -> str:
    """A GitHub-like login: names, name+year, initials, handles (mean about 10 characters)."""
    style = rng.random()
    if style < 0.22:
        login = rng.choice(FIRST) + rng.choice(LAST)
    elif style < 0.34:
        login = rng.choice(FIRST) + "-" + rng.choice(LAST)
    elif style < 0.50:
        login = rng.choice(FIRST) + str(rng.choice([rng.randint(1, 99), rng.randint(1960, 2012)]))
    elif style < 0.60:
        login = rng.choice(FIRST)[0] + rng.choice(LAST)
    elif style < 0.72:
        login = rng.choice(WORDS) + rng.choice(WORDS + LAST)
    elif style < 0.95:
        alphabet = string.ascii_lowercase * 3 + string.ascii_uppercase + string.digits
        login = "".join(rng.choices(alphabet, k=rng.randint(4, 14)))
    else:
        login = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 4)))
    if rng.random() < 0.1:
        login = login.capitalize()
    return login[:39]


def distinct_logins(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        login = realistic_login(rng)
        while login.lower() in seen:  # GitHub logins are unique case-insensitively
            login = (login + rng.choice(string.digits))[-39:]
        seen.add(login.lower())
        out.append(login)
    return out


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    n = ap.parse_args().users
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logins = distinct_logins(n)
        dump = work / "users.json"
        dump.write_text("".join(f'{{"login": "{x}", "id": {i}}}\n' for i, x in enumerate(logins)))
        empty_config = work / "config.yaml"
        empty_config.write_text("{}\n")
        server, url = start_redis(work / "redis")
        try:
            r = redis.Redis.from_url(url)
            info = r.info("server")
            mean = sum(map(len, logins)) / n
            print(f"redis {info['redis_version']}, {n:,} users, mean login length {mean:.1f} "
                  f"(member github.com/<login>: {mean + 11:.1f} bytes)")

            before = used_memory(r)
            env = {**os.environ, "REDIS_URL": url, "BULKBACKUP_CONFIG": str(empty_config)}
            subprocess.run([sys.executable, "-m", "bulkbackup", "ingest", str(dump)],
                           env=env, check=True)
            assert r.zcard("tracked") == n, r.zcard("tracked")
            report(r, "tracked", n, used_memory(r) - before)

            before = used_memory(r)
            pipe = r.pipeline(transaction=False)
            for i in range(0, n, 1000):
                pipe.hset("bulkbackup:syncd", mapping=dict.fromkeys(logins[i:i + 1000],
                                                                    "12 1 0 0"))
            pipe.execute()
            assert r.hlen("bulkbackup:syncd") == n
            report(r, "bulkbackup:syncd", n, used_memory(r) - before)
            mem = r.info("memory")
            print(f"total used_memory {mem['used_memory']:,} bytes, "
                  f"used_memory_rss {mem['used_memory_rss']:,} bytes")
        finally:
            server.terminate()
            server.wait()


def report(r: redis.Redis, key: str, n: int, delta: int) -> None:
    usage = int(r.memory_usage(key, samples=0) or 0)
    encoding = r.object("encoding", key)
    print(f"{key} ({encoding!r}): used_memory delta {delta:,} bytes = {delta / n:.1f} B/user; "
          f"MEMORY USAGE {usage:,} bytes = {usage / n:.1f} B/user")


if __name__ == "__main__":
    main()
