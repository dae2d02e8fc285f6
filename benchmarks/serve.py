"""`bulkbackup serve` against its own data access, side by side.

    python -m benchmarks.serve [--users 1000000] [--bundle-mb 1024] [--s3-mb 100] [--seconds 5]

With U users tracked (ZADD in bulk: a third never synced, the rest synced in the last 60 days,
each with a summary in bulkbackup:syncd) it measures, at the same concurrency (4 clients):

- /api/users, the first page and a deep one (rank 0.9 U), and /api/stats, in requests/s,
  against the same Redis reads done directly with redis-py (the page script, the pipelined
  locks/summaries/claims; the stats pipelines). Target: serve costs at most 2x (ratio >= 0.5).
- a bundle download over HTTP against reading the same object directly (open() for the local
  store, boto3 GetObject for S3 on a moto_server). Target >= 0.8.
- serve's peak RSS while 4 clients download the large bundle at once. Target < 150 MB.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import httpx
import redis

from bulkbackup.queue import keys
from bulkbackup.testing.services import free_port, redis_server
from bulkbackup.web.users import Cursor

CLIENTS = 4
CHUNK = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def fill_redis(r: redis.Redis, users: int) -> None:
    now = time.time()
    rng = random.Random(7)
    pipe = r.pipeline(transaction=False)
    batch: dict[str, float] = {}
    syncd: dict[str, str] = {}
    for i in range(users):
        login = f"user{i:07d}"
        synced = i % 3 != 0
        batch[keys.member(login)] = now - rng.random() * 60 * 86400 if synced else -math.inf
        if synced:
            syncd[login] = f"{rng.randint(0, 30)} 0 0 {int(rng.random() < 0.05)}"
        if len(batch) >= 10_000:
            pipe.zadd(keys.TRACKED, batch)
            if syncd:
                pipe.hset(keys.SYNCD, mapping=syncd)  # type: ignore[arg-type]
            pipe.execute()
            batch, syncd = {}, {}
    if batch:
        pipe.zadd(keys.TRACKED, batch)
        if syncd:
            pipe.hset(keys.SYNCD, mapping=syncd)  # type: ignore[arg-type]
        pipe.execute()
    minute = int(now // 60)
    for m in range(minute - 60, minute + 1):
        r.hset(keys.rate(m), mapping={"users": rng.randint(100, 900), "repos": 3000,
                                      "bytes": 10**9})
    r.hset(keys.LAST_RUN, mapping={"started_at": int(now - 3600), "ended_at": int(now),
                                   "users": 1000, "repos": 3000, "bytes": 10**10})


def rate(fn: Callable[[], object], seconds: float, clients: int = CLIENTS) -> float:
    """Calls per second of ``fn`` from ``clients`` threads for ``seconds``."""
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            fn()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def curl_rate(url: str, requests: int, clients: int) -> float:
    """Requests/s of ``clients`` curl processes, each making ``requests`` requests on one
    kept-alive connection (a C client: a Python one would measure itself)."""
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as cfg:
        for _ in range(requests):
            cfg.write(f'url = "{url}"\noutput = "/dev/null"\n')
    started = time.monotonic()
    procs = [subprocess.Popen(["curl", "-sf", "-K", cfg.name]) for _ in range(clients)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"curl failed on {url}")
    elapsed = time.monotonic() - started
    os.unlink(cfg.name)
    return clients * requests / elapsed


def direct_page(r: redis.Redis, script: object, cursor: Cursor | None) -> None:
    args = ["", "", 50] if cursor is None else [
        cursor.encode().partition("_")[0], keys.member(cursor.login), 50]
    flat = script(keys=[keys.TRACKED], args=args)  # type: ignore[operator]
    members = [flat[i] for i in range(0, len(flat), 2)]
    pipe = r.pipeline(transaction=False)
    pipe.mget([keys.lock(m) for m in members])
    pipe.hmget(keys.SYNCD, [keys.login_of(m) for m in members])
    pipe.hmget(keys.CLAIMS, members)
    pipe.execute()


def direct_stats(r: redis.Redis) -> None:
    from bulkbackup.web import data

    data.stats(r)  # exactly the server's two pipelines (and their parsing)


def start_serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "serve", "--port",
                                 str(port)], env=env, cwd=ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"serve did not start: {log.read_text()[-2000:]}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def download_rate(url: str, size: int, clients: int = 1) -> float:
    """MB/s of ``clients`` concurrent full downloads of ``url`` by curl (a Python client
    would measure itself: httpx tops out near 500 MB/s here), or httpx without curl."""
    curl = shutil.which("curl")

    def one() -> None:
        got = 0
        if curl:
            out = subprocess.run([curl, "-sf", "-o", "/dev/null", "-w", "%{size_download}", url],
                                 capture_output=True, text=True, check=True, timeout=600)
            got = int(out.stdout)
        else:
            with httpx.stream("GET", url, timeout=300) as resp:
                for chunk in resp.iter_raw(CHUNK):
                    got += len(chunk)
        assert got == size, (got, size)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * size / 1e6 / (time.monotonic() - started)


def read_rate(path: Path) -> float:
    started = time.monotonic()
    n = 0
    with path.open("rb") as f:
        while data := f.read(CHUNK):
            n += len(data)
    return n / 1e6 / (time.monotonic() - started)


def make_bundle(store: Path, login: str, mb: int) -> Path:
    """A store object written as the local store lays it out (data file plus no sidecar)."""
    folder = store / login
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "%object").write_bytes(b"[]")
    path = folder / "big.bundle"
    block = os.urandom(CHUNK)
    with path.open("wb") as f:
        for _ in range(mb):
            f.write(block)
    return path


def bench_pages(r: redis.Redis, url: str, users: int, seconds: float) -> None:
    from bulkbackup.web.users import _script

    script = _script(r)
    member, score = r.zrange(keys.TRACKED, int(users * 0.9), int(users * 0.9), desc=True,
                             withscores=True)[0]
    deep = Cursor(float(score), keys.login_of(member))
    cases = [
        ("/api/users first page", "/api/users", lambda: direct_page(r, script, None)),
        (f"/api/users deep page (rank {int(users * 0.9)})",
         f"/api/users?cursor={deep.encode()}", lambda: direct_page(r, script, deep)),
        ("/api/stats", "/api/stats", lambda: direct_stats(r)),
    ]
    for name, path, direct in cases:
        direct()  # warm up (script load, connections)
        curl_rate(url + path, 20, 1)
        for clients in (1, CLIENTS):
            b = rate(direct, seconds, clients)
            a = curl_rate(url + path, max(int(b * seconds / clients / 3), 50), clients)
            print(f"{name:40} x{clients} serve {a:6.0f} req/s   redis-py {b:6.0f} /s   "
                  f"ratio {a / b:.2f}")


def bench_download(url: str, path: Path, pid: int) -> None:
    size = path.stat().st_size
    read_rate(path)  # page cache warm for both
    direct = max(read_rate(path) for _ in range(2))
    served = max(download_rate(f"{url}/users/big/big.bundle", size) for _ in range(2))
    print(f"{'download ' + str(size >> 20) + ' MiB, local store':45} serve {served:8.0f} MB/s   "
          f"open() {direct:8.0f} MB/s   ratio {served / direct:.2f}")
    peak = [rss_mb(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = peak[0]
    together = download_rate(f"{url}/users/big/big.bundle", size, clients=4)
    done.set()
    sampler.join()
    print(f"{'4 clients at once':45} serve {together:8.0f} MB/s in all; serve RSS "
          f"{before:.0f} MB before, peak {max(peak):.0f} MB (target < 150)")


def bench_s3(tmp: Path, redis_url: str, mb: int) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    moto = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "REDIS_URL": redis_url, "BULKBACKUP_STORE": "s3://github.com",
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "BULKBACKUP_CONFIG": str(tmp / "empty.yaml")}
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="github.com")
        s3.put_object(Bucket="github.com", Key="big", Body=b"[]")
        body = os.urandom(CHUNK) * mb
        s3.put_object(Bucket="github.com", Key="big/big.bundle", Body=body)
        del body
        proc, url = start_serve(env, tmp / "serve-s3.log")
        try:
            def direct() -> float:
                started = time.monotonic()
                stream = s3.get_object(Bucket="github.com", Key="big/big.bundle")["Body"]
                n = sum(len(c) for c in iter(lambda: stream.read(CHUNK), b""))
                return n / 1e6 / (time.monotonic() - started)

            size = mb * CHUNK
            d = max(direct() for _ in range(2))
            s = max(download_rate(f"{url}/users/big/big.bundle", size) for _ in range(2))
            print(f"{'download ' + str(mb) + ' MiB, S3 (moto_server)':45} serve {s:8.0f} MB/s"
                  f"   boto3 {d:8.0f} MB/s   ratio {s / d:.2f}")
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        moto.terminate()
        moto.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--bundle-mb", type=int, default=1024)
    ap.add_argument("--s3-mb", type=int, default=100, help="0 skips the S3 download")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    (tmp / "empty.yaml").write_text("{}\n")
    try:
        with redis_server(tmp / "redis") as redis_url:
            r = redis.Redis.from_url(redis_url, decode_responses=True)
            started = time.monotonic()
            fill_redis(r, args.users)
            print(f"{args.users} users tracked in {time.monotonic() - started:.1f}s "
                  f"(Redis {r.info('memory')['used_memory'] / 1e6:.0f} MB)")
            store = tmp / "store"
            bundle = make_bundle(store, "big", args.bundle_mb)
            env = {**os.environ, "REDIS_URL": redis_url, "BULKBACKUP_STORE": str(store),
                   "BULKBACKUP_CONFIG": str(tmp / "empty.yaml")}
            proc, url = start_serve(env, tmp / "serve.log")
            try:
                bench_pages(r, url, args.users, args.seconds)
                bench_download(url, bundle, proc.pid)
            finally:
                proc.terminate()
                proc.wait(15)
            bundle.unlink()
            if args.s3_mb:
                bench_s3(tmp, redis_url, args.s3_mb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
