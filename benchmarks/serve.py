"""`bulkbackup serve` against its own data access and against nginx, side by side.

    python -m benchmarks.serve [--users 1000000] [--bundle-mb 1024] [--many-mb 8]
                               [--s3-mb 100] [--clients 200] [--seconds 5] [--only s3|pages] [--pin]

With U users tracked (ZADD in bulk: a third never synced, the rest synced in the last 60 days,
each with a summary in bulkbackup:syncd) it measures:

- /api/users, the first page and a deep one (rank 0.9 U), and /api/stats, in requests/s by
  curl (1, 4 and --clients at once), against the same Redis reads done directly with redis-py
  (the page script, the pipelined locks/summaries/claims; the stats pipelines) from 1 and 4
  threads. Target: ratio >= 0.5 with 200 clients.
- downloads against Debian's nginx (`sendfile on`) serving the same file of the same local
  store on the same machine, and nginx proxying the same S3 object (moto_server), both driven
  by the same client (curl, --clients transfers at once, each of a --many-mb object twice),
  in MB/s and requests/s. Targets: local >= 0.5x nginx, S3 >= 0.8x nginx-proxy. Also one
  client's download of the large bundle against nginx and open() / boto3 (the old baselines).
- serve's peak RSS during those, and while 4 clients download the large bundle at once.

`--only s3` runs the S3 downloads alone (no users, pages or local downloads); `--only pages`
the pages alone. `--pin` gives
the servers a core of their own (serve and nginx, one at a time, and the redis-py baselines'
threads on core 1; curl, Redis and moto on core 0): as deployed, where clients and S3 are
elsewhere.

Without nginx (`apt-get install nginx`) it says so in one line and exits 2.
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
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import redis

from benchmarks import nginx
from bulkbackup.archive.layout import UserCounts
from bulkbackup.queue import keys
from bulkbackup.testing.services import free_port, redis_server
from bulkbackup.web.users import Cursor

CLIENTS = 4
MANY_CLIENTS = 200
ROUNDS = 2  # downloads per client in the many-clients case
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
            failed = rng.random() < 0.05  # as sync writes it (layout.UserCounts)
            syncd[login] = UserCounts(rng.randint(0, 30), 0, 0, failed, 0,
                                      "not found" if failed else None).encode()
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
        nginx.server_affinity()  # --pin: on the servers' core, as serve is
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


@dataclass(frozen=True)
class Load:
    requests_s: float
    mb_s: float


def curl_many(url: str, requests: int, clients: int, size: int | None = None) -> Load:
    """``requests`` GETs of ``url`` by curl, ``clients`` at once (two curl processes, each
    with half of them in parallel on kept-alive connections: one curl process would be the
    limit). Each answer must be a 200 (of ``size`` bytes when given)."""
    procs_n = 2 if clients >= 2 else 1
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as cfg:
        for _ in range(max(requests // procs_n, 1)):
            cfg.write(f'url = "{url}"\noutput = "/dev/null"\n')
    cmd = ["curl", "-sL", "-Z", "--parallel-immediate", "--parallel-max",
           str(max(clients // procs_n, 1)), "-w", "%{http_code} %{size_download}\n", "-K",
           cfg.name]
    started = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(procs_n)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    elapsed = time.monotonic() - started
    os.unlink(cfg.name)
    answers = [line.split() for out in outs for line in out.splitlines()]
    bad = [a for a in answers if a[0] != "200" or (size is not None and int(a[1]) != size)]
    if bad or not answers:
        raise SystemExit(f"curl on {url}: {len(bad)} of {len(answers)} answers wrong: {bad[:3]}")
    total = sum(int(a[1]) for a in answers)
    return Load(len(answers) / elapsed, total / 1e6 / elapsed)


class PeakRss:
    """The peak RSS of a process while the block runs (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_mb(pid)
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def direct_page(r: redis.Redis, script: object, cursor: Cursor | None) -> None:
    args = ["", "", 50] if cursor is None else [cursor.score_text(), cursor.member, 50]
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
                                 str(port)], env=env, cwd=ROOT, stdout=out, stderr=out,
                                preexec_fn=nginx.server_affinity)
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
            out = subprocess.run([curl, "-sfL", "-o", "/dev/null", "-w", "%{size_download}", url],
                                 capture_output=True, text=True, check=True, timeout=600)
            got = int(out.stdout)
        else:
            with httpx.stream("GET", url, timeout=300) as resp:
                for chunk in resp.iter_raw(CHUNK):
                    got += len(chunk)
        assert got == size, (got, size)

    failed: list[BaseException] = []

    def guarded() -> None:
        try:
            one()
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise SystemExit(f"download of {url} failed: {failed[0]!r}")
    return clients * size / 1e6 / (time.monotonic() - started)


def read_rate(path: Path) -> float:
    started = time.monotonic()
    n = 0
    with path.open("rb") as f:
        while data := f.read(CHUNK):
            n += len(data)
    return n / 1e6 / (time.monotonic() - started)


def make_bundle(store: Path, login: str, mb: int, name: str = "big.bundle") -> Path:
    """A store object written as the local store lays it out (data file plus no sidecar)."""
    folder = store / login
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "%object").write_bytes(b"[]")
    path = folder / name
    block = os.urandom(CHUNK)
    with path.open("wb") as f:
        for _ in range(mb):
            f.write(block)
    return path


def bench_pages(r: redis.Redis, url: str, users: int, seconds: float,
                many_clients: int) -> None:
    from bulkbackup.web.users import _script

    script = _script(r)
    member, score = r.zrange(keys.TRACKED, int(users * 0.9), int(users * 0.9), desc=True,
                             withscores=True)[0]
    deep = Cursor(float(score), str(member))
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
        # redis-py from 4 threads is its best (more threads only share the GIL).
        many = curl_many(url + path, max(int(b * seconds / 3), 1000), many_clients)
        print(f"{name:40} x{many_clients} serve {many.requests_s:6.0f} req/s   redis-py "
              f"{b:6.0f} /s (x{CLIENTS})   ratio {many.requests_s / b:.2f}")


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids``."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nginx's workers)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return kids


def side_by_side(name: str, serve_url: str, nginx_url: str, size: int, clients: int,
                 pid: int, nginx_pid: int) -> None:
    """``clients`` at once, ROUNDS downloads each, from serve then nginx; serve's peak RSS;
    the CPU time each server spent per GB sent (the machine's load does not change it much,
    where it changes the MB/s of both)."""
    requests = clients * ROUNDS
    curl_many(serve_url, clients, clients, size)  # warm (connections, caches) both
    curl_many(nginx_url, clients, clients, size)
    workers = [nginx_pid, *children(nginx_pid)]
    with PeakRss(pid) as rss:
        cpu = cpu_s([pid])
        served = curl_many(serve_url, requests, clients, size)
        serve_cpu = (cpu_s([pid]) - cpu) / (requests * size / 1e9)
    cpu = cpu_s(workers)
    ceiling = curl_many(nginx_url, requests, clients, size)
    nginx_cpu = (cpu_s(workers) - cpu) / (requests * size / 1e9)
    print(f"{name:45} x{clients}: serve {served.mb_s:6.0f} MB/s {served.requests_s:5.0f} req/s"
          f"   {'nginx' if 'local' in name else 'nginx-proxy'} {ceiling.mb_s:6.0f} MB/s "
          f"{ceiling.requests_s:5.0f} req/s   ratio {served.mb_s / ceiling.mb_s:.2f}   "
          f"serve RSS {rss.before:.0f} -> peak {rss.peak:.0f} MB   CPU s/GB serve "
          f"{serve_cpu:.2f} nginx {nginx_cpu:.2f}")


def bench_download(url: str, ngx: nginx.Nginx, store: Path, bundle: Path, many: Path,
                   pid: int, clients: int) -> None:
    size = bundle.stat().st_size
    big = f"/{bundle.relative_to(store)}"
    read_rate(bundle)  # page cache warm for all
    direct = max(read_rate(bundle) for _ in range(2))
    served = max(download_rate(f"{url}/users{big}", size) for _ in range(2))
    ceiling = max(download_rate(f"{ngx.url}{nginx.LOCAL_PREFIX}{big[1:]}", size)
                  for _ in range(2))
    print(f"{'download ' + str(size >> 20) + ' MiB, local store':45} x1: serve {served:6.0f} "
          f"MB/s   nginx {ceiling:6.0f} MB/s   ratio {served / ceiling:.2f}   open() "
          f"{direct:6.0f} MB/s   ratio {served / direct:.2f}")
    small = f"/{many.relative_to(store)}"
    side_by_side(f"download {many.stat().st_size >> 20} MiB, local store", f"{url}/users{small}",
                 f"{ngx.url}{nginx.LOCAL_PREFIX}{small[1:]}", many.stat().st_size, clients, pid,
                 ngx.pid)
    with PeakRss(pid) as rss:
        together = download_rate(f"{url}/users{big}", size, clients=4)
    print(f"{'4 clients at once, ' + str(size >> 20) + ' MiB':45} serve {together:6.0f} MB/s "
          f"in all; serve RSS {rss.before:.0f} MB before, peak {rss.peak:.0f} MB "
          f"(target < 150)")


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    moto = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return moto, endpoint
        except OSError:
            time.sleep(0.1)
    moto.terminate()
    raise SystemExit("moto_server did not start")


def bench_s3(tmp: Path, redis_url: str, nginx_exe: str, mb: int, many_mb: int,
             clients: int) -> None:
    moto, endpoint = start_moto()
    env = {**os.environ, "REDIS_URL": redis_url, "BULKBACKUP_STORE": "s3://github.com",
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "BULKBACKUP_CONFIG": str(tmp / "empty.yaml")}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="github.com")
        s3.put_object(Bucket="github.com", Key="big", Body=b"[]")
        for key, n in (("big/big.bundle", mb), ("big/many.bundle", many_mb)):
            # Readable without a signature: nginx's proxy_pass does not sign.
            s3.put_object(Bucket="github.com", Key=key, Body=os.urandom(CHUNK) * n,
                          ACL="public-read")
        proc, url = start_serve(env, tmp / "serve-s3.log")
        try:
            with nginx.running(nginx_exe, tmp / "nginx-s3", tmp / "store",
                               f"{endpoint}/github.com") as ngx:
                def direct() -> float:
                    started = time.monotonic()
                    stream = s3.get_object(Bucket="github.com", Key="big/big.bundle")["Body"]
                    n = sum(len(c) for c in iter(lambda: stream.read(CHUNK), b""))
                    return n / 1e6 / (time.monotonic() - started)

                size = mb * CHUNK
                d = max(direct() for _ in range(2))
                s = max(download_rate(f"{url}/users/big/big.bundle", size) for _ in range(2))
                c = max(download_rate(f"{ngx.url}{nginx.S3_PREFIX}big/big.bundle", size)
                        for _ in range(2))
                print(f"{'download ' + str(mb) + ' MiB, S3 (moto_server)':45} x1: serve "
                      f"{s:6.0f} MB/s   nginx-proxy {c:6.0f} MB/s   ratio {s / c:.2f}   boto3 "
                      f"{d:6.0f} MB/s   ratio {s / d:.2f}")
                side_by_side(f"download {many_mb} MiB, S3 (moto_server)",
                             f"{url}/users/big/many.bundle",
                             f"{ngx.url}{nginx.S3_PREFIX}big/many.bundle", many_mb * CHUNK,
                             clients, proc.pid, ngx.pid)
                bench_s3_redirect(tmp, env, ngx, mb, many_mb, clients)
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        moto.terminate()
        moto.wait(15)


def bench_s3_redirect(tmp: Path, env: dict[str, str], ngx: nginx.Nginx, mb: int,
                      many_mb: int, clients: int) -> None:
    """The same with `serve.redirect_downloads`: a 302 to a presigned URL (the client follows
    it: the bytes come from S3, not through serve)."""
    config = tmp / "redirect.yaml"
    config.write_text("serve:\n  redirect_downloads: true\n")
    proc, url = start_serve({**env, "BULKBACKUP_CONFIG": str(config)}, tmp / "serve-302.log")
    try:
        size = mb * CHUNK
        s = max(download_rate(f"{url}/users/big/big.bundle", size) for _ in range(2))
        c = max(download_rate(f"{ngx.url}{nginx.S3_PREFIX}big/big.bundle", size)
                for _ in range(2))
        print(f"{'download ' + str(mb) + ' MiB, S3, redirect_downloads':45} x1: serve "
              f"{s:6.0f} MB/s   nginx-proxy {c:6.0f} MB/s   ratio {s / c:.2f}")
        side_by_side(f"download {many_mb} MiB, S3, redirect_downloads",
                     f"{url}/users/big/many.bundle",
                     f"{ngx.url}{nginx.S3_PREFIX}big/many.bundle", many_mb * CHUNK, clients,
                     proc.pid, ngx.pid)
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--bundle-mb", type=int, default=1024)
    ap.add_argument("--many-mb", type=int, default=8,
                    help="the object that --clients download at once")
    ap.add_argument("--s3-mb", type=int, default=100, help="0 skips the S3 downloads")
    ap.add_argument("--clients", type=int, default=MANY_CLIENTS)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", choices=["s3", "pages"],
                    help="s3: only the S3 downloads; pages: only /api/users and /api/stats")
    ap.add_argument("--pin", action="store_true",
                    help="serve, nginx and the redis-py baselines on core 1; curl, Redis and "
                         "moto on core 0 (2+ cores): a server with a core of its own")
    args = ap.parse_args()
    if args.pin:
        nginx.SERVER_CORES = {1}
        os.sched_setaffinity(0, {0})  # this process and its children: curl, Redis, moto
    if args.only == "s3" and not args.s3_mb:
        ap.error("--only s3 needs --s3-mb above 0")
    nginx_exe = nginx.find()
    if nginx_exe is None:
        print("benchmarks.serve: nginx not found (apt-get install nginx): it is the ceiling "
              "the downloads are measured against", file=sys.stderr)
        raise SystemExit(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    (tmp / "empty.yaml").write_text("{}\n")
    try:
        with redis_server(tmp / "redis") as redis_url:
            if args.only == "s3":
                bench_s3(tmp, redis_url, nginx_exe, args.s3_mb, args.many_mb, args.clients)
                return
            r = redis.Redis.from_url(redis_url, decode_responses=True)
            started = time.monotonic()
            fill_redis(r, args.users)
            print(f"{args.users} users tracked in {time.monotonic() - started:.1f}s "
                  f"(Redis {r.info('memory')['used_memory'] / 1e6:.0f} MB)")
            store = tmp / "store"
            pages_only = args.only == "pages"
            bundle = make_bundle(store, "big", 1 if pages_only else args.bundle_mb)
            many = make_bundle(store, "big", 1 if pages_only else args.many_mb, "many.bundle")
            env = {**os.environ, "REDIS_URL": redis_url, "BULKBACKUP_STORE": str(store),
                   "BULKBACKUP_CONFIG": str(tmp / "empty.yaml")}
            proc, url = start_serve(env, tmp / "serve.log")
            try:
                with nginx.running(nginx_exe, tmp / "nginx", store) as ngx:
                    print(f"nginx {ngx.url} (worker_processes {ngx.workers}, sendfile on), "
                          f"serve {url}, {os.cpu_count()} cores")
                    bench_pages(r, url, args.users, args.seconds, args.clients)
                    if pages_only:
                        return
                    bench_download(url, ngx, store, bundle, many, proc.pid, args.clients)
            finally:
                proc.terminate()
                proc.wait(15)
            bundle.unlink()
            many.unlink()
            if args.s3_mb:
                bench_s3(tmp, redis_url, nginx_exe, args.s3_mb, args.many_mb, args.clients)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
