"""`bulkbackup run --server` (a remote pool: the lease API of `serve`, no Redis or store of its
own) against `bulkbackup run` (Redis and the store), side by side in one run.

    python -m benchmarks.remote [--procs 2] [--users 60] [--repos 2] [--file-kb 0] [--rounds 2]
                                [--store local|s3] [--carried] [--pin]

The same population on the same stand-in forge: users x repos small repositories. Each pass
starts from a fresh store with every user due; the two passes alternate for ``--rounds``
rounds (a load that drifts weighs on both alike; serve is stopped, SIGSTOP, during `run`).
Prints users/s and repos/s of both and their ratio (target >= 0.9) per round and over all
rounds, serve's CPU seconds per 1 000 users, then the bytes that went through the server
(both directions, counted by a TCP relay in front of it, a pass of its own) per byte
archived (1.0: the archives are carried; the rest is the API's JSON and headers and the
tips an increment reads). `--store s3`: both on moto_server (a bucket each), where serve hands
the workers presigned uploads (web/lease_uploads.py): the archives go to the bucket, not
through serve. `--pin`: every pool on core 0 and everything else on core 1, as a worker
machine apart from the server (on a shared machine serve's CPU is the remote pool's loss).
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from benchmarks.serve import start_moto
from bulkbackup.config import StoreSettings
from bulkbackup.store import open_store
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port, redis_server

ROOT = Path(__file__).resolve().parent.parent
# serve's defaults: its per-token request rate (serve.lease_requests_per_s) must not be what
# bounds a normal pool.
SERVE_CONFIG = "# the defaults\n"
REQUEST_LINE_END = b" HTTP/1.1\r\n"


class Relay:
    """A TCP relay to ``target_port`` that counts the bytes it carries (both directions) and
    the requests sent (their request lines: plain HTTP/1.1, archives do not hold one)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # worker -> server
        self.down = 0  # server -> worker
        self.requests = 0
        self._mu = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        tail = b""  # a request line may straddle two reads
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
                    with self._mu:
                        if key.fileobj is a:
                            self.up += len(data)
                            self.requests += (tail + data).count(REQUEST_LINE_END)
                            tail = data[-(len(REQUEST_LINE_END) - 1):]
                        else:
                            self.down += len(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()


@dataclass(frozen=True)
class Carried:
    """What went through the relay in its pass."""

    up: int
    down: int
    requests: int
    archived: int


def start_serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "serve", "--port",
                                 str(port)], env=env, cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        if proc.poll() is None:  # not another process that took the port first
            return proc, port
    proc.kill()
    sys.exit(f"serve did not start: {log.read_text()[-2000:]}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --pin: the pools (both kinds) on this core, everything else (serve, Redis, the stand-in,
# moto) on the other: the worker machine apart from the server's, as deployed.
POOL_CORE: set[int] | None = None


def _pool_affinity() -> None:
    if POOL_CORE is not None:
        os.sched_setaffinity(0, POOL_CORE)


def timed_run(env: dict[str, str], cwd: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bulkbackup", "run", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, check=False,
                          preexec_fn=_pool_affinity)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bulkbackup run {' '.join(args)} failed: {proc.stderr[-3000:]}")
    print(f"    {proc.stderr.strip().splitlines()[-1]}")
    return elapsed


class Target:
    """Where a pass stores: a local store's folder, or a bucket of moto_server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def empty(self) -> None:
        if not self.url.startswith("s3://"):
            shutil.rmtree(self.url, ignore_errors=True)
            Path(self.url).mkdir(parents=True)
            return
        store = open_store(StoreSettings(url=self.url), create=True)
        try:
            for info in list(store.list()):
                store.delete(info.key)
        finally:
            store.close()

    def stored_bytes(self) -> int:
        store = open_store(StoreSettings(url=self.url))
        try:
            return sum(info.size for info in store.list())
        finally:
            store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--repos", type=int, default=2)
    ap.add_argument("--file-kb", type=int, default=0,
                    help="a random file of this size in each repository (default: none)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of both passes, one after the other (default: 2)")
    ap.add_argument("--tmp", help="where the stores and work files go (default: temp dir)")
    ap.add_argument("--store", choices=["local", "s3"], default="local",
                    help="s3: both stores on moto_server (direct uploads)")
    ap.add_argument("--carried", action="store_true",
                    help="with --store s3: serve.direct_uploads off (archives through serve)")
    ap.add_argument("--pin", action="store_true",
                    help="the pools on core 0, serve and the rest on core 1 (2+ cores)")
    args = ap.parse_args()
    if args.pin:
        global POOL_CORE
        POOL_CORE = {0}
        os.sched_setaffinity(0, {1})  # this process and what it starts: serve, Redis, ...
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-", dir=args.tmp))
    moto = None
    try:
        if args.store == "s3":
            moto, endpoint = start_moto()
            os.environ.update({"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
        with redis_server(tmp / "redis") as url, Forge(tmp / "forge") as forge:
            measure(args, tmp, url, forge)
    finally:
        if moto is not None:
            moto.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


def repo(name: str, file_kb: int) -> RepoSpec:
    if not file_kb:
        return RepoSpec(name)
    return RepoSpec(name, files={"data.bin": os.urandom(file_kb * 1024)})


def measure(args: argparse.Namespace, tmp: Path, url: str, forge: Forge) -> None:
    logins = [f"user{i:04d}" for i in range(args.users)]
    for login in logins:
        forge.add_user(login, [repo(f"r{j}", args.file_kb) for j in range(args.repos)])
    cfg = tmp / "config.yaml"
    cfg.write_text(SERVE_CONFIG + ("serve:\n  direct_uploads: false\n" if args.carried else ""))
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GITHUB_", "BULKBACKUP_", "REDIS_", "AWS_"))}
    base = {**clean, "BULKBACKUP_CONFIG": str(cfg), "GITHUB_API_URL": forge.url}
    r = redis.Redis.from_url(url)

    def due(store: Target) -> None:
        r.flushall()
        store.empty()
        r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in logins})

    if args.store == "s3":  # the run and serve reach the bucket; the remote pool does not
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        local_store, remote_store = Target("s3://bench-local"), Target("s3://bench-remote")
    else:
        aws = {}
        local_store = Target(str(tmp / "local" / "github.com"))
        remote_store = Target(str(tmp / "remote" / "github.com"))
    local_env = {**base, **aws, "REDIS_URL": url, "BULKBACKUP_STORE": local_store.url}
    serve_env = {**local_env, "BULKBACKUP_STORE": remote_store.url}
    remote_store.empty()
    serve, port = start_serve(serve_env, tmp / "serve.log")

    def token(name: str) -> dict[str, str]:
        """The remote pool's environment with a new worker token (Redis was flushed)."""
        made = subprocess.run([sys.executable, "-m", "bulkbackup", "worker-token", "add",
                               name], env=serve_env, cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        return {**base, "BULKBACKUP_WORKER_TOKEN": made}

    home = tmp / "worker-home"
    home.mkdir()
    local_s: list[float] = []
    remote_s: list[float] = []
    serve_cpu_s = 0.0
    try:
        # Rounds of both passes one after the other: a machine whose load drifts weighs
        # on both alike (each round's ratio is printed, and the ratio of the totals).
        for i in range(args.rounds):
            # 1. `run`: Redis and the store.
            due(local_store)
            serve.send_signal(signal.SIGSTOP)  # its own work must not slow `run`
            try:
                local_s.append(timed_run(local_env, ROOT, "--procs", str(args.procs),
                                         "--no-stats"))
            finally:
                serve.send_signal(signal.SIGCONT)
            # 2. `run --server`: the same users through `serve` on the same kind of store.
            due(remote_store)
            if serve.poll() is not None:
                sys.exit(f"serve ended: {(tmp / 'serve.log').read_text()[-2000:]}")
            remote_env = token(f"bench-{i}")
            cpu_before = cpu_s(serve.pid)
            remote_s.append(timed_run(remote_env, home, "--server",
                                      f"http://127.0.0.1:{port}", "--procs", str(args.procs)))
            serve_cpu_s += cpu_s(serve.pid) - cpu_before
            print(f"  round {i + 1}: run {len(logins) / local_s[-1]:.1f} users/s, run "
                  f"--server {len(logins) / remote_s[-1]:.1f}: ratio "
                  f"{local_s[-1] / remote_s[-1]:.2f}")
        archived = remote_store.stored_bytes()
        # 3. The bytes through the server: the same pass again, through a counting relay.
        due(remote_store)
        remote_env = token("bench-relayed")
        relay = Relay(port)
        timed_run(remote_env, home, "--server", f"http://127.0.0.1:{relay.port}",
                  "--procs", str(args.procs))
        carried = Carried(relay.up, relay.down, relay.requests, archived)
    finally:
        serve.terminate()
        serve.wait(15)
    report(args, len(logins), sum(local_s), sum(remote_s), serve_cpu_s / args.rounds,
           carried)


def report(args: argparse.Namespace, n: int, local_s: float, remote_s: float,
           serve_cpu_s: float, carried: Carried) -> None:
    """The figures, ``local_s`` and ``remote_s`` summed over the rounds."""
    up, down, archived = carried.up, carried.down, carried.archived
    repos, k = n * args.repos, args.rounds
    print(f"users: {n} x {args.repos} repos, P={args.procs}, {k} round(s): "
          f"run {n * k / local_s:.1f} users/s {repos * k / local_s:.1f} repos/s | "
          f"run --server {n * k / remote_s:.1f} users/s {repos * k / remote_s:.1f} repos/s | "
          f"ratio {local_s / remote_s:.2f} (target >= 0.9)")
    print(f"server CPU: {serve_cpu_s:.2f} s for {n} users: "
          f"{serve_cpu_s / n * 1000:.1f} s per 1 000 users")
    how = " (carried)" if args.carried else ""
    print(f"store: {args.store}{how}; bytes through the server: {up + down:,} for "
          f"{archived:,} archived: "
          f"{(up + down) / max(archived, 1):.2f} per archived byte (1.0: carried; sent "
          f"{up / max(archived, 1):.2f}, received {down / max(archived, 1):.2f}; "
          f"{archived / max(repos, 1) / 1024:.1f} KiB archived per repository)")
    print(f"lease API requests: {carried.requests:,} for {n} users: "
          f"{carried.requests / max(n, 1):.1f} per user ({args.repos} repos each)")


if __name__ == "__main__":
    main()
