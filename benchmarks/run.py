"""`bulkbackup run` against its baselines, side by side in one run.

    python -m benchmarks.run [--procs 4] [--users 100] [--repos 3] [--empty-users 20000]

1. Archive throughput: a stand-in forge with users x repos small repositories. Baseline: raw
   git doing the same work per repository (clone --mirror, bundle create --all, zip of HEAD)
   with `xargs -P procs`. Then `bulkbackup run --procs P` on a fresh Redis and local store.
   Prints repos/s for both and the ratio (target >= 0.8).
2. Coordination: N users with no repositories, through each API. Baseline: the users/s the
   forge itself lists at the same concurrency (P client processes with keep-alive): REST's
   listing calls, two requests a user (its repositories, its gists: `run.gists` is on by
   default); GraphQL's query of 100 owners, as `run` builds it
   (forge/github_graphql_query.build_query, gist_owners), 100 users a request. Then
   `bulkbackup run --procs P` with that API (REST with a token the stand-in gives an endless
   budget). Prints users/s and the ratio (target >= 0.5).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis
import urllib3

from bulkbackup.forge.github_graphql_query import build_query, gist_owners
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import redis_server

ROOT = Path(__file__).resolve().parent.parent
OWNERS_PER_QUERY = 100  # as many as `run` asks for in one GraphQL query
REST_TOKEN = "bench-rest-token"



def run_bulkbackup(env: dict[str, str], procs: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bulkbackup", "run", "--procs", str(procs),
                           "--no-stats"], env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bulkbackup run failed: {proc.stderr}")
    print(f"    {proc.stderr.strip().splitlines()[-1]}")
    return elapsed


def raw_git(urls: list[str], work: Path, procs: int) -> float:
    script = ('set -e; d=$(mktemp -d -p "$0"); git clone --mirror -q "$1" "$d/m.git"; '
              'git -C "$d/m.git" bundle create -q "$d/x.bundle" --all; '
              'git -C "$d/m.git" archive --format=zip -o "$d/x.zip" HEAD; rm -rf "$d/m.git"')
    started = time.perf_counter()
    subprocess.run(["xargs", "-P", str(procs), "-n", "1", "sh", "-c", script, str(work)],
                   input="\n".join(urls).encode(), check=True)
    return time.perf_counter() - started


def _client(url: str, logins: list[str], out: mp.Queue[int]) -> None:
    http = urllib3.PoolManager(maxsize=1)
    for login in logins:  # what `run` asks per user (run.gists is on by default)
        for path in (f"/users/{login}/repos?per_page=100&type=owner",
                     f"/users/{login}/gists?per_page=100"):
            got = http.request("GET", url + path)
            assert got.status == 200, got.status
    out.put(len(logins))


def _graphql_client(url: str, logins: list[str], out: mp.Queue[int]) -> None:
    http = urllib3.PoolManager(maxsize=1)
    for at in range(0, len(logins), OWNERS_PER_QUERY):
        asks = [(x, None) for x in logins[at:at + OWNERS_PER_QUERY]]
        # With the gists of the owners `run` asks them for (run.gists is on by default).
        query, variables = build_query(asks, gist_owners(asks, int(time.time() // 86400)))
        got = http.request("POST", f"{url}/graphql", body=orjson.dumps(
            {"query": query, "variables": variables}),
            headers={"Content-Type": "application/json"})
        assert got.status == 200 and b'"errors"' not in got.data, got.data[:300]
    out.put(len(logins))


def forge_rate(url: str, logins: list[str], procs: int, api: str) -> float:
    """The users/s the forge lists through ``api``, P clients with keep-alive."""
    q: mp.Queue[int] = mp.Queue()
    size = OWNERS_PER_QUERY if api == "graphql" else 1
    chunks = [logins[i:i + size] for i in range(0, len(logins), size)]
    parts = [[x for chunk in chunks[i::procs] for x in chunk] for i in range(procs)]
    client = _graphql_client if api == "graphql" else _client
    started = time.perf_counter()
    ps = [mp.Process(target=client, args=(url, part, q)) for part in parts]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return sum(q.get() for _ in ps) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--repos", type=int, default=3)
    ap.add_argument("--empty-users", type=int, default=20_000)
    ap.add_argument("--tmp", help="where the store and work files go (default: the temp dir)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-", dir=args.tmp))
    try:
        with redis_server(tmp / "redis") as url, Forge(tmp / "forge") as forge:
            measure(args, tmp, redis.Redis.from_url(url), forge)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path, r: redis.Redis, forge: Forge) -> None:
    cfg = tmp / "config.yaml"
    cfg.write_text("{}\n")
    port = r.connection_pool.connection_kwargs["port"]
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "BULKBACKUP_CONFIG": str(cfg), "GITHUB_API_URL": forge.url,
           "BULKBACKUP_STORE": str(tmp / "store" / "github.com")}
    # 1. archive throughput
    logins = [f"arch{i:04d}" for i in range(args.users)]
    for login in logins:
        forge.add_user(login, [RepoSpec(f"r{j}") for j in range(args.repos)])
    n_repos = args.users * args.repos
    urls = [f"{forge.url}/{x}/r{j}.git" for x in logins for j in range(args.repos)]
    work = tmp / "raw"
    work.mkdir()
    base_s = raw_git(urls, work, args.procs)
    r.flushall()
    r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in logins})
    ours_s = run_bulkbackup(env, args.procs)
    print(f"archive: {n_repos} repos, P={args.procs}: raw git + xargs -P "
          f"{n_repos / base_s:.1f} repos/s | bulkbackup run {n_repos / ours_s:.1f} "
          f"repos/s | ratio {base_s / ours_s:.2f} (target >= 0.8)")
    # 2. coordination
    empty = [f"empty{i:06d}" for i in range(args.empty_users)]
    with forge.lock:
        for login in empty:
            forge.users[login] = []
    forge.set_token_budget(REST_TOKEN, remaining=10**9, reset_in_s=3600)
    for api in ("graphql", "rest"):
        rate = forge_rate(forge.url, empty, args.procs, api)
        r.flushall()
        r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in empty})
        shutil.rmtree(tmp / "store", ignore_errors=True)
        api_env = {**env, "GITHUB_API": api}
        if api == "rest":
            api_env["GITHUB_TOKEN"] = REST_TOKEN
        ours_s = run_bulkbackup(api_env, args.procs)
        users_s = len(empty) / ours_s
        print(f"coordination ({api}): {len(empty)} users without repositories, P={args.procs}: "
              f"forge lists {rate:,.0f} users/s | bulkbackup run {users_s:,.0f} users/s | "
              f"ratio {users_s / rate:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
