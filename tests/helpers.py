"""What several test modules share (issue 21): git and bundle reads, store reads and damage,
`bulkbackup run` / `serve` / `verify` in child processes, bounded waits. Test modules import
from here, never from one another."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import math
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

import httpx
import orjson
import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import layout
from bulkbackup.archive.metadata import canonical
from bulkbackup.config import GitHubSettings, RunSettings
from bulkbackup.errors import Interrupted
from bulkbackup.forge.git_auth import git_auth
from bulkbackup.forge.listing import Batching, Conditions, Lister, OwnerListing, TakenBack
from bulkbackup.git.auth import ANONYMOUS
from bulkbackup.git.gitops import GitWork
from bulkbackup.git.packfetch import FetchedIncrement, fetch_increment
from bulkbackup.queue import keys
from bulkbackup.queue.connection import server_time
from bulkbackup.run.reports import Report
from bulkbackup.run.worker import Worker, WorkerArgs
from bulkbackup.store import Store
from bulkbackup.store.local import LocalStore
from bulkbackup.store.s3 import S3Store
from bulkbackup.testing.forge import Forge
from bulkbackup.testing.services import free_port

ROOT = Path(__file__).resolve().parent.parent

# -- git -------------------------------------------------------------------------------------


def git_run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``git args``, which may fail: the finished process (output as text)."""
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          errors="replace", timeout=120, check=False)


def git_bytes(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              input: bytes | None = None) -> bytes:
    """``git args`` (must succeed); its standard output as bytes."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, input=input, capture_output=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        input: bytes | None = None) -> str:
    """``git args`` (must succeed); its standard output."""
    return git_bytes(*args, cwd=cwd, env=env, input=input).decode()


def refs_of(repo: Path) -> dict[str, str]:
    """Every ref of ``repo`` -> its object name."""
    out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo)
    return {ref: sha for sha, ref in (line.split() for line in out.splitlines())}


def list_heads(bundle: Path) -> dict[str, str]:
    """The refs a bundle carries (HEAD included) -> object names."""
    out = git("bundle", "list-heads", str(bundle), cwd=bundle.parent)
    return {ref: sha for sha, ref in (line.split() for line in out.splitlines())}


# -- the store -------------------------------------------------------------------------------


def read(store: Store, key: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start`` to ``end`` of ``key``, through Store.open."""
    with store.open(key, start, end) as f:
        return f.read()


def damage(store: Store, key: str, data: bytes, drop: tuple[str, ...] = ()) -> None:
    """Replace ``key``'s data, keeping its metadata (but the names in ``drop``)."""
    head = store.head(key)
    assert head is not None
    store.put_bytes(key, data, canonical({k: v for k, v in head.metadata.items()
                                          if k not in drop}))


def remove_object(store: Store, key: str) -> None:
    """Delete an object the way an operator would: behind the store's back (not with
    Store.delete, whose own tests are in test_store.py)."""
    if isinstance(store, S3Store):
        store._client.delete_object(Bucket=store.bucket, Key=key)
    else:
        assert isinstance(store, LocalStore)
        store._path(key).unlink()


def base_meta(store: Store, login: str, name: str) -> tuple[str, int]:
    """The full bundle's chain and count of increments."""
    head = store.head(layout.bundle_key(login, name))
    assert head is not None
    return head.get("Chain"), int(head.get("Increments") or 0)


def parts(store: Store, login: str, name: str) -> list[tuple[str, int, int]]:
    """The stored increments of ``login/name``: (chain, seq, size), in order."""
    out = []
    for info in store.list(layout.parts_prefix(login, name)):
        key = layout.parse_key(info.key)
        out.append((key.chain, key.seq, info.size))
    return sorted(out)


# -- increments fetched by git/packfetch.py (the stand-in's user `u`) ----------------------

PACK_TOKEN = "ghp_packfetchSECRET0123456789abcdef"
PACK_RUN = RunSettings(git_timeout_s=60)


def pack_url(forge: Forge, name: str) -> str:
    return f"{forge.url}/u/{name}.git"


def base_of(forge: Forge, tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """The full archive's bundle and its refs with HEAD (as the lead reads them back)."""
    archive = GitWork(PACK_RUN, tmp_path / "work").archive(
        "u", name, pack_url(forge, name), "main", ANONYMOUS)
    assert archive.bundle is not None
    return archive.bundle, list_heads(archive.bundle)


def fetch(forge: Forge, tmp_path: Path, name: str, old: dict[str, str], part: str,
          gh: GitHubSettings | None = None, default_branch: str | None = "main",
          check: Callable[[], None] = lambda: None, **run: Any) -> FetchedIncrement:
    """The increment of ``u/name`` over ``old`` into ``tmp_path/part``."""
    gh = gh or GitHubSettings(api_url=forge.url, allow_http_token=True)
    settings = dataclasses.replace(PACK_RUN, **run)
    return fetch_increment(pack_url(forge, name), old, default_branch, tmp_path / part,
                           settings, git_auth(gh, PACK_TOKEN), check)


def restore_bundles(tmp_path: Path, bundles: list[Path]) -> Path:
    """Apply the bundles in order as restore does; the repository's refs are the last one's."""
    repo = tmp_path / f"restored-{len(list(tmp_path.glob('restored-*')))}.git"
    git("init", "-q", "--bare", str(repo), cwd=tmp_path)
    for part in bundles:
        git("bundle", "verify", "-q", str(part), cwd=repo)
        git("fetch", "-q", "--prune", str(part), "+refs/*:refs/*", cwd=repo)
    fsck = subprocess.run(["git", "fsck", "--full", "--strict"], cwd=repo, capture_output=True,
                          text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not any(w in fsck.stdout + fsck.stderr for w in ("missing", "broken", "error"))
    return repo


def check_increment(forge: Forge, name: str, inc: FetchedIncrement, tmp_path: Path,
                    bundles: list[Path]) -> Path:
    """The increment's refs, HEAD and restore agree with the stand-in's repository."""
    assert inc.bundle is not None
    expected = remote_refs(forge, "u", name)
    assert inc.refs == expected
    assert inc.head == expected[f"refs/heads/{inc.branch}"]
    assert list_heads(inc.bundle) == {**expected, "HEAD": inc.head}
    repo = restore_bundles(tmp_path, [*bundles, inc.bundle])
    assert refs_of(repo) == expected
    return repo


# -- the command line ------------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the real `bulkbackup` command line in a child process (stdout/stderr as text)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bulkbackup", *args],
        input=stdin, capture_output=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def sync(login: str, env: dict[str, str] | None = None) -> str:
    """`bulkbackup sync LOGIN` (must succeed); its standard output."""
    proc = run_cli("sync", login, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def restore(login: str, name: str, to: Path, at: str | None = None) -> Path:
    """`bulkbackup restore LOGIN/NAME` into ``to`` (must succeed); the mirror, fsck'd."""
    args = ["restore", f"{login}/{name}", "--to", str(to), "--force"]
    proc = run_cli(*args, *(["--at", at] if at else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mirror = to / login / f"{name}.git"
    git("fsck", "--full", "--no-dangling", cwd=mirror)
    return mirror


def verify(*args: str) -> tuple[int, dict[str, Any]]:
    """`bulkbackup verify ARGS --json`: its exit code and report."""
    proc = run_cli("verify", *args, "--json")
    assert proc.stdout, proc.stderr
    return proc.returncode, orjson.loads(proc.stdout)


def source(forge: Forge, login: str, name: str) -> Path:
    """The stand-in's bare repository ``login/name``."""
    return forge.git_root / login / f"{name}.git"


def remote_refs(forge: Forge, login: str, name: str, pulls: bool = False) -> dict[str, str]:
    """The stand-in's refs of ``login/name`` (``pulls``: with its pull requests')."""
    return {r: s for r, s in refs_of(source(forge, login, name)).items()
            if pulls or not r.startswith("refs/pull/")}


# -- `bulkbackup run` ------------------------------------------------------------------------


def run_config(run_extra: str = "", github_extra: str = "") -> str:
    """The tests' run configuration (a short lock TTL, quick back-off) plus ``run_extra``
    under `run:` and ``github_extra`` under `github:` (YAML lines, indented)."""
    return ("run:\n  lock_ttl_s: 2\n  grace_s: 20\n  claim_target_s: 1.0\n" + run_extra
            + "github:\n  backoff_s: 0.05\n" + github_extra)


def start_run(env: dict[str, str], *args: str, host: str = "hostA",
              new_session: bool = False) -> subprocess.Popen[str]:
    """`bulkbackup run ARGS` in a child process; ``new_session``: in a process group of its
    own (group id = its pid), as systemd or a shell's job control starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "bulkbackup", "run", *args],
        env={**env, "BULKBACKUP_WORKER_HOST": host}, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session,
    )


def track(r: redis.Redis, *logins: str) -> None:
    """Track ``logins`` as never synced."""
    r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in logins})


def expire_claim(r: redis.Redis, member: str) -> None:
    """End ``member``'s lock and lease now, as lock_ttl_s would once their holder (paused)
    cannot refresh them: PEXPIRE of the lock, a lease deadline of the server's now. A refresh
    already on its way may land after this: wait for the lock to be gone (bounded by the TTL)."""
    r.pexpire(keys.lock(member), 1)
    r.zadd(keys.LEASES, {member: server_time(r)}, xx=True)
    wait_for(lambda: r.get(keys.lock(member)) is None, 30, "the lock to expire")


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def workers_of(pid: int) -> list[int]:
    """The worker processes of a run: the children of its multiprocessing forkserver."""
    for kid in children(pid):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in cmd:
            return children(kid)
    return []


def wait_for(cond: Callable[[], object], timeout_s: float = 60, what: str = "condition"
             ) -> None:
    """Poll ``cond`` every 50 ms until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def next_second() -> None:
    """Return once the next whole second has begun: what is stamped from now on (at one
    second's resolution) is later than everything stamped so far (0 to 1 s, not 1.1 s)."""
    second = math.floor(time.time()) + 1
    while (left_s := second - time.time()) > 0:
        time.sleep(left_s)


def all_synced(r: redis.Redis, logins: list[str], start: float) -> bool:
    scores = r.zmscore("tracked", [f"github.com/{x}" for x in logins])
    return all(s is not None and start <= s < float("inf") for s in scores)


# -- `bulkbackup serve` ----------------------------------------------------------------------

SERVE_TOKEN = "admin-token-for-tests"
WORKER_HOST = "serve-test-host"


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, timeout: float = 30, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout, **kwargs)  # type: ignore[arg-type]

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        """A request with ``path`` sent exactly as given (no client normalization)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def start_serve(env: dict[str, str], log: Path, *args: str,
                preexec_fn: Callable[[], None] | None = None, cwd: Path = ROOT) -> Served:
    """`bulkbackup serve` on a free port, started in ``cwd``; returns once it answers."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "serve", "--port",
                                 str(port), *args], env=env, cwd=cwd, stdout=out, stderr=out,
                                preexec_fn=preexec_fn)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/healthz", timeout=2)
            return Served(url, proc, log)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not answer: {log.read_text()[-2000:]}")


def serve_on_database(redis_server: str, db: int, tmp_path: Path
                      ) -> tuple[redis.Redis, Path, dict[str, str], Served]:
    """`serve` on database ``db`` of ``redis_server`` (emptied: a database of the test's own,
    others being in use) and a local store in ``tmp_path``: the database's client, the
    store's folder, serve's environment and serve (the caller stops it)."""
    url = re.sub(r"/\d+$", f"/{db}", redis_server)
    r = redis.Redis.from_url(url)
    r.flushdb()
    store = tmp_path / "store" / "github.com"
    store.mkdir(parents=True)
    serve_env = base_env(tmp_path, url, str(store))
    return r, store, serve_env, start_serve(serve_env, tmp_path / "serve.log")


def stop_serve(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(15)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait()


def serve_get(env: dict[str, str], cwd: Path, paths: list[str]) -> list[httpx.Response]:
    """Start a real `serve` in ``cwd``, GET each path, stop it."""
    served = start_serve(env, cwd / "serve.log", cwd=cwd)
    try:
        return [served.get(p) for p in paths]
    finally:
        stop_serve(served)


def base_env(tmp: Path, redis_url: str, store: str) -> dict[str, str]:
    """The environment of `serve` and `run` on ``store``: nothing from the machine's."""
    cfg = tmp / "config.yaml"
    cfg.write_text("run:\n  lock_ttl_s: 2\n  claim_target_s: 1.0\ngithub:\n  backoff_s: 0.05\n"
                   "  max_retries: 1\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "BULKBACKUP_", "AWS_"))}
    env.update(REDIS_URL=redis_url, BULKBACKUP_STORE=store, BULKBACKUP_CONFIG=str(cfg),
               BULKBACKUP_WORKER_HOST=WORKER_HOST)
    return env


def run_backup(env: dict[str, str], logins: list[str]) -> None:
    """Track ``logins`` and back them up with `bulkbackup run --procs 2` (must succeed)."""
    r = redis.Redis.from_url(env["REDIS_URL"])
    r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in logins})
    r.close()
    proc = subprocess.run([sys.executable, "-m", "bulkbackup", "run", "--procs", "2"],
                          env=env, cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]


def rows_by_login(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    return {u["login"]: u for u in doc["users"]}  # type: ignore[attr-defined, index]


# -- the `run` worker in this process (tests/test_worker_inprocess.py) ----------------------


@dataclass
class InProcess:
    """One worker and the reading end of its reports' pipe."""

    worker: Worker
    reader: Connection

    def run(self) -> list[Report]:
        """Drain `tracked` (as a worker process does), then every report it sent."""
        # Stopped while waiting: its users were given back (as worker_main takes it).
        with contextlib.suppress(Interrupted):
            self.worker.run()
        return self.reports()

    def reports(self) -> list[Report]:
        out: list[Report] = []
        while self.reader.poll(0):
            out.append(self.reader.recv())
        return out

    def close(self) -> None:
        self.worker.queue.close()
        self.reader.close()


def worker_of(settings: config.Settings, store: Store | None = None,
              lister: Callable[[Worker, Conditions], Lister] | None = None, index: int = 0,
              budget: int = -1, run_start: float | None = None) -> InProcess:
    """A Worker from plain parts: the parent's pipe, flag and `--max-users` budget are made
    here; its parent is this process's (never seen gone); `lister(worker, conditions)`
    builds its lister (default: the one github.api names). Workers of one run share its
    ``run_start``: pass the first one's to the next."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    graceful = multiprocessing.RawValue(ctypes.c_bool, False)
    shared = multiprocessing.Value("q", budget)
    # As the run's parent: its start in whole seconds, so that a user completed in its first
    # second scores run_start, not below it, and is not claimed twice.
    start = float(math.floor(time.time())) if run_start is None else run_start
    args = WorkerArgs(settings=settings, index=index, worker_id=f"1.{index}.inprocess",
                      run_start=start, clock_offset_s=0.0, procs=1)
    holder: list[Worker] = []
    factory = None if lister is None else (lambda c: lister(holder[0], c))
    worker = Worker(args, writer, graceful, shared, os.getppid(), store, factory)
    holder.append(worker)
    return InProcess(worker, reader)


class Hooked:
    """A lister that does `hook(finished)` after each step of the real one, and
    `hook(None)` when it is asked to take its owners back."""

    def __init__(self, real: Lister, hook: Callable[[list[OwnerListing] | None], None]
                 ) -> None:
        self.real = real
        self.hook = hook

    @property
    def batching(self) -> Batching:
        return self.real.batching

    @property
    def queued(self) -> int:
        return self.real.queued

    def submit(self, logins: Sequence[str]) -> list[OwnerListing]:
        return self.real.submit(logins)

    def step(self, deadline: float | None) -> list[OwnerListing]:
        finished = self.real.step(deadline)
        self.hook(finished)
        return finished

    def take_back(self) -> TakenBack:
        self.hook(None)
        return self.real.take_back()

    def wait_ready(self) -> None:
        self.real.wait_ready()

    def close(self) -> None:
        self.real.close()


def hooked(hook: Callable[[Worker, list[OwnerListing] | None], None]
           ) -> Callable[[Worker, Conditions], Lister]:
    def make(worker: Worker, conditions: Conditions) -> Lister:
        return Hooked(worker._github_lister(conditions), lambda done: hook(worker, done))
    return make


def completed(r: redis.Redis, logins: Sequence[str], since: float) -> bool:
    scores = r.zmscore(keys.TRACKED, [keys.member(x) for x in logins])
    return all(s is not None and since <= s < math.inf for s in scores)


def nothing_held(r: redis.Redis) -> bool:
    return (not r.keys("lock:*") and r.zcard(keys.LEASES) == 0 and r.hlen(keys.CLAIMS) == 0
            and r.zcount(keys.TRACKED, math.inf, math.inf) == 0)


def part_missing(missing: str, test: str = "") -> NoReturn:
    """A part the machine lacks (``missing`` names what to install): the test is skipped, but
    under CI=true (.ci/run installs every part) it fails, so CI never passes without it."""
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"CI=true: {test}{missing}")
    pytest.skip(missing)
