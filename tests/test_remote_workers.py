"""Remote workers, phase 1 (issue 23): worker tokens and `serve`'s lease API, with real
processes: a real `bulkbackup serve`, a real redis-server, the local store (and moto_server
for S3), the command line in child processes. The client is run/lease_client.py."""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from bulkbackup import config
from bulkbackup.archive import layout
from bulkbackup.archive.layout import UserCounts
from bulkbackup.backup.sync_named import in_order
from bulkbackup.backup.user_backup import UserBackup
from bulkbackup.config import StoreSettings
from bulkbackup.errors import LockLost, NotFound
from bulkbackup.forge.github_lister import open_github_lister
from bulkbackup.forge.listing import OwnerListing
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.git.bundles import read_header, stored_header
from bulkbackup.git.gitops import GitWork
from bulkbackup.queue import history, keys
from bulkbackup.run.lease_client import (
    LeaseClient,
    Outcome,
    ServerRefused,
    ServerUnavailable,
    WorkerTokenRefused,
)
from bulkbackup.run.remote_queue import RemoteQueue, RemoteTarget
from bulkbackup.run.remote_store import RemoteStore
from bulkbackup.run.uploads import Uploads
from bulkbackup.store import Store, open_store
from bulkbackup.store.fenced import FencedStore, StopFence
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import wait_until
from tests.helpers import Served, git, run_cli, start_serve, stop_serve

CONFIG = "run:\n  lock_ttl_s: 60\nserve:\n  max_upload_mb: 16\n"


@dataclass
class Setup:
    served: Served
    r: redis.Redis
    env: dict[str, str]
    store: Store
    tmp: Path

    def token(self, name: str) -> str:
        out = run_cli("worker-token", "add", name, env=self.env)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def client(self, token: str, **kwargs: object) -> LeaseClient:
        return LeaseClient(self.served.url, token, timeout_s=30, retries=0,
                           **kwargs)  # type: ignore[arg-type]

    def track(self, *logins: str) -> None:
        self.r.zadd(keys.TRACKED, {keys.member(x): float("-inf") for x in logins})


def make_env(tmp: Path, redis_url: str, store: str, config: str = CONFIG) -> dict[str, str]:
    cfg = tmp / "config.yaml"
    cfg.write_text(config)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "BULKBACKUP_", "REDIS_"))}
    # serve's spool of uploads (tempfile) goes below the test's folder.
    (tmp / "spool").mkdir(exist_ok=True)
    env.update(REDIS_URL=redis_url, BULKBACKUP_STORE=store, BULKBACKUP_CONFIG=str(cfg),
               TMPDIR=str(tmp / "spool"))
    return env


def spooled(tmp: Path) -> list[Path]:
    return list((tmp / "spool").glob("bulkbackup-uploads-*/*"))


@contextmanager
def setup_for(tmp: Path, redis_url: str, store_url: str, config: str = CONFIG
              ) -> Iterator[Setup]:
    env = make_env(tmp, redis_url, store_url, config)
    store = open_store(StoreSettings(url=store_url), create=True)
    served = start_serve(env, tmp / "serve.log")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield Setup(served, r, env, store, tmp)
    finally:
        stop_serve(served)
        store.close()
        r.close()


@pytest.fixture
def s(redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    with setup_for(tmp_path, redis_url, str(tmp_path / "store" / "github.com")) as setup:
        yield setup


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real git bundle."""
    work = tmp_path_factory.mktemp("repo")
    git("init", "-q", "-b", "main", str(work))
    (work / "f.txt").write_text("hello\n")
    git("-C", str(work), "add", "f.txt")
    git("-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "one")
    out = work.parent / "repo.bundle"
    git("-C", str(work), "bundle", "create", "-q", str(out), "--all")
    return out


# -- tokens -----------------------------------------------------------------------------------


def test_token_add_list_revoke(s: Setup) -> None:
    token = s.token("box-1")
    assert len(token) >= 40
    # Redis keeps its hash only.
    dump = str(s.r.hgetall(keys.WORKER_TOKENS)) + str(s.r.hgetall(keys.WORKER_TOKEN_HASHES))
    assert token not in dump and "box-1" in dump
    again = run_cli("worker-token", "add", "box-1", env=s.env)
    assert again.returncode == 2 and "exists" in again.stderr
    bad = run_cli("worker-token", "add", "a.b", env=s.env)
    assert bad.returncode == 2 and "invalid worker token name" in bad.stderr
    listed = run_cli("worker-token", "list", env=s.env)
    assert listed.returncode == 0 and token not in listed.stdout
    assert listed.stdout.startswith("box-1\tcreated ") and "last used never" in listed.stdout
    # A request is a use (recorded in the background).
    s.client(token).refresh([])
    wait_until(lambda: "last used never" not in run_cli("worker-token", "list",
                                                        env=s.env).stdout, "last use")
    out = run_cli("worker-token", "revoke", "box-1", env=s.env)
    assert out.returncode == 0, out.stderr
    assert run_cli("worker-token", "list", env=s.env).stdout == ""
    assert run_cli("worker-token", "revoke", "box-1", env=s.env).returncode == 2
    with pytest.raises(WorkerTokenRefused):
        s.client(token).lease(1)


def test_bad_token_401(s: Setup) -> None:
    s.token("box-1")
    s.track("alice")
    with pytest.raises(WorkerTokenRefused):
        s.client("not-a-token").lease(1)
    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "Basic eA=="}):
        resp = httpx.post(s.served.url + "/api/lease", json={"n": 1}, headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert s.r.zscore(keys.TRACKED, keys.member("alice")) == float("-inf")  # not claimed


# -- lease, upload, complete ------------------------------------------------------------------


def lease_one(s: Setup, client: LeaseClient, login: str) -> None:
    lease = client.lease(1)
    assert lease.users == [login], lease
    assert lease.lease_id.endswith(".remote") and lease.lock_ttl_s == 60


def test_lease_upload_complete(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    wid = s.r.get(keys.lock(keys.member("alice")))
    assert wid is not None and wid.split(".")[1:] == ["box-1", "remote"]
    assert client.refresh(["alice", "bob"]) == (["alice"], ["bob"])
    # Through the Store a remote worker's UserBackup will write to (fenced, as a local one).
    remote = FencedStore(RemoteStore(client), StopFence())
    key = layout.bundle_key("alice", "hello")
    remote.put_file(key, bundle, {"LastSync": "2026-01-01T00:00:00Z", "Worker": "forged"})
    remote.put_bytes("alice", b'[{"name": "hello"}]', {"LastSync": "2026-01-01T00:00:00Z"})
    remote.put_file(layout.zip_key("alice", "hello"), make_zip(s.tmp), {"LastSync": "x"})
    head = s.store.head(key)
    assert head is not None and head.size == bundle.stat().st_size
    assert head.get("Worker") == "box-1" and head.get("LastSync") == "2026-01-01T00:00:00Z"
    assert s.store.read_bytes(key) == bundle.read_bytes()
    assert s.store.head("alice").get("Worker") == "box-1"  # type: ignore[union-attr]
    # Reads of the leased user's state come through the server too.
    got = remote.head(key)
    assert got is not None and got.get("worker") == "box-1" and got.size == head.size
    assert remote.head(layout.bundle_key("alice", "nope")) is None
    with remote.open(key, 0, 16) as f:
        assert f.read() == bundle.read_bytes()[:16]
    with remote.open(key) as f:
        assert f.read() == bundle.read_bytes()
    # The tips an increment needs: the stored bundle's header, read through the server.
    assert stored_header(remote, key) == read_header(bundle, key)
    with pytest.raises(NotFound):
        remote.open(layout.bundle_key("alice", "nope"))
    assert [o.key for o in remote.list("alice/", shallow=True)] == [
        layout.bundle_key("alice", "hello"), layout.zip_key("alice", "hello")]
    remote.replace_metadata(key, {"LastSync": "2026-02-02T00:00:00Z", "Chain": "c"})
    assert s.store.head(key).get("Chain") == "c"  # type: ignore[union-attr]
    part = layout.part_key("alice", "hello", layout.chain_id(head.last_modified), 0)
    remote.copy(key, part)
    assert s.store.read_bytes(part) == bundle.read_bytes()
    remote.delete(part)
    assert s.store.head(part) is None
    with pytest.raises(NotFound):
        remote.copy(layout.bundle_key("alice", "nope"), part)
    counts = UserCounts(1, 0, 0, False, 1).encode()
    assert client.complete("alice", True, counts, 1, 1234) is Outcome.DONE
    score = s.r.zscore(keys.TRACKED, keys.member("alice"))
    assert score is not None and score > time.time() - 3600
    assert s.r.exists(keys.lock(keys.member("alice"))) == 0
    assert s.r.hget(keys.SYNCD, "alice") == counts
    assert s.r.smembers(keys.worker_archived("box-1")) == {keys.member("alice")}
    # Done: the lease is gone; a second completion and any write are refused.
    with pytest.raises(LockLost):
        client.complete("alice", True, counts)
    with pytest.raises(LockLost):
        remote.put_file(key, bundle, {})


def make_zip(tmp: Path) -> Path:
    import zipfile

    path = tmp / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello-main/README", "hi\n")
    return path


def test_give_back_and_fail(s: Setup) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice", "bob")
    lease = client.lease(2)
    assert sorted(lease.users) == ["alice", "bob"]
    assert client.give_back("alice") is Outcome.DONE
    assert s.r.zscore(keys.TRACKED, keys.member("alice")) == float("-inf")
    # A sync that listed nothing: the summary Redis has keeps its counts, gets the error.
    s.r.hset(keys.SYNCD, "alice", UserCounts(2, 0, 0, False, 2).encode())
    assert client.lease(1).users == ["alice"]
    assert client.complete("alice", True, error="the API failed: 502") is Outcome.DONE
    summary = UserCounts.decode(s.r.hget(keys.SYNCD, "alice"))
    assert summary == UserCounts(2, 0, 0, True, 2, "the API failed: 502")
    assert client.fail("bob") is Outcome.DONE
    assert s.r.hget(keys.FAILURES, keys.member("bob")) == "1"
    with pytest.raises(LockLost):
        client.give_back("bob")
    assert s.r.smembers(keys.worker_leases("box-1")) == set()


def test_status_and_what_complete_writes_for_the_worker(s: Setup) -> None:
    """`run --server`'s start and end (status), and what a local worker writes to Redis
    after a sync, written by the server at `complete`: pending verify marks, the history."""
    client = s.client(s.token("box-1"))
    s.track("alice", "bob")
    status = client.status()
    assert (status.remaining, status.in_flight) == (2, 0)
    start = float(math.floor(status.server_time))  # as the pool's (completions are whole s)
    assert client.lease(1, run_start=start).users == ["alice"]
    assert (client.status(start).remaining, client.status(start).in_flight) == (1, 1)
    with pytest.raises(ServerRefused):  # not repository names: refused, nothing written
        client.complete("alice", True, "1 0 0 0 1", 1, 10, verify=["../x"])
    assert client.complete("alice", True, "1 0 0 0 1", 1, 10, verify=["hello"]) \
        is Outcome.DONE
    assert s.r.zrange(keys.VERIFY_PENDING, 0, -1) == ["alice/hello"]
    assert [e.repos_changed for e in history.read(s.r, "alice")] == [1]
    assert (client.status(start).remaining, client.status(start).in_flight) == (1, 0)


def test_an_empty_lease_says_whether_the_run_is_over(s: Setup) -> None:
    """An idle worker's poll is one request: a lease that leased nobody carries what status
    says (in flight, remaining), and RemoteQueue.drained reads it from there."""
    holder, idle = s.client(s.token("box-1")), s.client(s.token("box-2"))
    s.track("alice")
    start = float(math.floor(holder.status().server_time))
    got = holder.lease(1, run_start=start)
    assert got.users == ["alice"] and got.in_flight is None
    empty = idle.lease(1, run_start=start)
    assert (empty.users, empty.remaining, empty.in_flight) == ([], 0, 1)
    queue = RemoteQueue(RemoteTarget(s.served.url, s.token("box-3")), start, 60)
    try:
        assert queue.claim_due(1).claimed == [] and not queue.drained()
        assert holder.complete("alice", True, "1 0 0 0 1", 1, 10) is Outcome.DONE
        empty = idle.lease(1, run_start=start)
        assert (empty.users, empty.remaining, empty.in_flight) == ([], 0, 0)
        assert queue.claim_due(1).claimed == [] and queue.drained()
    finally:
        queue.close()


def test_a_state_read_answers_the_first_reads_of_a_sync(s: Setup, bundle: Path) -> None:
    """The head of the user object brings the listing of its archives (one `state`
    request): the listing, and the heads of archives it does not list, need no request
    until this process writes them; forget (the user done) drops what it knew."""
    token = s.token("box-1")
    client = s.client(token)
    s.track("alice")
    lease_one(s, client, "alice")
    client.put("alice", "alice", b"[]", {})
    client.put("alice", "alice/a.bundle", bundle, {"LastSync": "x"})
    state = client.state("alice")
    assert state.user is not None and state.user.size == 2
    assert [o.key for o in state.objects or []] == ["alice/a.bundle"]
    store = RemoteStore(s.client(token))
    assert store.head("alice") is not None and store.request_count == 1
    assert [o.key for o in store.list("alice/", shallow=True)] == ["alice/a.bundle"]
    assert store.head("alice/b.bundle") is None and store.request_count == 1
    listed = store.head("alice/a.bundle")  # listed: its metadata is asked for
    assert listed is not None and listed.get("LastSync") == "x" and store.request_count == 2
    store.put_file("alice/b.bundle", bundle, {})
    assert store.head("alice/b.bundle") is not None  # written since: asked again
    assert [o.key for o in store.list("alice/", shallow=True)] == [
        "alice/a.bundle", "alice/b.bundle"]
    assert store.request_count == 5
    store.forget("alice")
    assert store.head("alice/c.bundle") is None and store.request_count == 6
    with pytest.raises(LockLost):  # another user's state: 403
        client.state("bob")


def test_another_users_keys_403_nothing_written(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    other = s.client(s.token("box-2"))
    s.track("alice", "bob")
    lease_one(s, client, "alice")
    lease_one(s, other, "bob")
    for login, key in (("alice", "bob/x.bundle"), ("alice", "bob"), ("bob", "bob/x.bundle"),
                       ("alice", "alice/../bob/x.bundle")):
        with pytest.raises(LockLost):
            client.put(login, key, bundle, {})
    resp = httpx.put(s.served.url + "/api/lease/alice/objects/bob/x.bundle",
                     content=bundle.read_bytes(),
                     headers={"Authorization": f"Bearer {client_token(client)}"})
    assert resp.status_code == 403
    for call in (lambda: client.complete("bob", True), lambda: client.give_back("bob"),
                 lambda: client.head("bob", "bob"), lambda: client.list("bob", "bob/")):
        with pytest.raises(LockLost):
            call()
    assert client.refresh(["bob"]) == ([], ["bob"])
    assert list(s.store.list("")) == []
    assert s.r.get(keys.lock(keys.member("bob"))) is not None  # still box-2's


def client_token(client: LeaseClient) -> str:
    return client._auth["Authorization"].removeprefix("Bearer ")


def test_uploads_must_be_what_the_key_says(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    auth = {"Authorization": f"Bearer {client_token(client)}"}
    url = s.served.url + "/api/lease/alice/objects/"
    for key, body in (("alice/a.bundle", b"PK\x03\x04 not a bundle at all"),
                      ("alice/a.zip", bundle.read_bytes()),
                      ("alice", b'{"not": "a list"}'), ("alice", b"[not json"),
                      ("alice/a.bundle", b"# v1 git bundle\n" + b"x" * 100)):
        resp = httpx.put(url + key, content=body, headers=auth)
        assert resp.status_code == 422, (key, resp.text)
    assert httpx.put(url + "alice/notes.txt", content=b"x", headers=auth).status_code == 400
    # An empty bundle is "no archive": allowed.
    assert httpx.put(url + "alice/empty.bundle", content=b"", headers=auth).status_code == 200
    assert [o.key for o in s.store.list("")] == ["alice/empty.bundle"]


def test_lapsed_lease_late_upload_refused(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    lock = keys.lock(keys.member("alice"))
    s.r.pexpire(lock, 1)
    wait_until(lambda: s.r.exists(lock) == 0, "lock expiry")
    with pytest.raises(LockLost):
        client.put("alice", layout.bundle_key("alice", "hello"), bundle, {})
    with pytest.raises(LockLost):
        client.complete("alice", True)
    # Claimed by another worker meanwhile: still refused, and its lease untouched.
    s.r.set(lock, "x.1.host", ex=60)
    with pytest.raises(LockLost):
        client.put("alice", layout.bundle_key("alice", "hello"), bundle, {})
    assert s.r.get(lock) == "x.1.host"
    assert list(s.store.list("")) == []


def test_a_chunked_upload_is_refused(s: Setup) -> None:
    """Without a Content-Length the size is not known before the bytes: 411."""
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")

    def body() -> Iterator[bytes]:
        yield b"# v2 git bundle\n"

    resp = httpx.put(s.served.url + "/api/lease/alice/objects/alice/a.bundle", content=body(),
                     headers={"Authorization": f"Bearer {client_token(client)}"})
    assert resp.status_code == 411
    assert list(s.store.list("")) == []


def test_upload_claiming_10_gb_refused_early(s: Setup) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    host, port = s.served.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("PUT", "/api/lease/alice/objects/alice/big.bundle")
        conn.putheader("Authorization", f"Bearer {client_token(client)}")
        conn.putheader("Content-Length", str(10 << 30))
        conn.endheaders()  # no byte of the body is sent
        resp = conn.getresponse()
        assert resp.status == 413 and b"max_upload_mb" in resp.read()
    finally:
        conn.close()
    assert list(s.store.list("")) == []


def test_a_body_longer_than_its_content_length_lands_nothing(s: Setup) -> None:
    """The bytes past the Content-Length are no request: the connection is dropped, and
    nothing of the upload is written."""
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    status, body = raw_upload(s, client, "alice/a.bundle", declared=1000,
                              body=b"# v2 git bundle\n" + b"x" * 5000, close=False)
    assert status in (400, None), body
    assert list(s.store.list("")) == []


def raw_upload(s: Setup, client: LeaseClient, key: str, declared: int, body: bytes,
               close: bool) -> tuple[int | None, bytes]:
    """A PUT written by hand: ``declared`` bytes announced, ``body`` sent; ``close``: hang up
    right after (a worker cut off mid-upload). (status, body) of the answer, if any."""
    host, port = s.served.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.sendall((f"PUT /api/lease/alice/objects/{key} HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {client_token(client)}\r\n"
                      f"Content-Length: {declared}\r\n\r\n").encode() + body)
        if close:
            return None, b""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                break
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else None
        return status, data
    except OSError:
        return None, b""
    finally:
        sock.close()


def test_truncated_upload_leaves_nothing(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    data = bundle.read_bytes()
    raw_upload(s, client, "alice/a.bundle", declared=len(data) + 100, body=data, close=True)
    # The server went on serving, and wrote nothing of it.
    client.put("alice", "alice/b.bundle", bundle, {})
    assert [o.key for o in s.store.list("")] == ["alice/b.bundle"]
    assert not list((s.tmp / "store").rglob("*a.bundle*")) and spooled(s.tmp) == []


# -- revoke -----------------------------------------------------------------------------------


def test_revoke_gives_leases_back_at_once_and_401(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice", "bob")
    assert sorted(client.lease(2).users) == ["alice", "bob"]
    out = run_cli("worker-token", "revoke", "box-1", env=s.env)
    assert out.returncode == 0 and "2 leased users given back" in out.stderr
    for login in ("alice", "bob"):
        assert s.r.exists(keys.lock(keys.member(login))) == 0
        assert s.r.zscore(keys.TRACKED, keys.member(login)) == float("-inf")
    assert s.r.zcard(keys.LEASES) == 0 and s.r.hlen(keys.CLAIMS) == 0
    with pytest.raises(WorkerTokenRefused):
        client.put("alice", "alice/a.bundle", bundle, {})
    with pytest.raises(WorkerTokenRefused):
        client.refresh(["alice"])
    # Claimable by anyone else at once.
    assert sorted(s.client(s.token("box-2")).lease(2).users) == ["alice", "bob"]
    assert list(s.store.list("")) == []


def test_revoke_redo_makes_its_users_due_again(s: Setup, bundle: Path) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice", "bob", "carol")
    assert sorted(client.lease(2).users) == ["alice", "bob"]
    for login in ("alice", "bob"):
        client.put(login, f"{login}/a.bundle", bundle, {})
        assert client.complete(login, True, "1 0 0 0 1", 1, 10) is Outcome.DONE
    assert client.lease(1).users == ["carol"]  # held when revoked: given back
    synced = s.r.zscore(keys.TRACKED, keys.member("alice"))
    assert synced is not None and synced > 0
    out = run_cli("worker-token", "revoke", "box-1", "--redo", env=s.env)
    assert out.returncode == 0, out.stderr
    assert "2 users it archived are due again" in out.stderr
    for login in ("alice", "bob"):
        assert s.r.zscore(keys.TRACKED, keys.member(login)) == 0
    assert s.r.zscore(keys.TRACKED, keys.member("carol")) == float("-inf")
    assert s.r.exists(keys.worker_archived("box-1")) == 0


# -- workers, metrics, rate -------------------------------------------------------------------


def test_workers_and_metrics_show_remote_workers(s: Setup) -> None:
    client = s.client(s.token("box-1"))
    s.track("alice")
    client.lease(1)

    def row() -> dict[str, object] | None:
        rows = s.served.get("/api/workers").json()["workers"]
        return next((w for w in rows if w.get("token") == "box-1"), None)

    wait_until(row, "the remote worker's row")
    got = row()
    assert got is not None and got["host"] == "remote" and got["users"] == 1
    assert "<td>box-1</td>" in s.served.get("/workers").text
    text = s.served.get("/metrics").text
    assert 'bulkbackup_remote_worker_rate_per_minute{token="box-1",what="users"}' in text


def test_request_rate_is_bounded_per_token(redis_url: str, tmp_path: Path) -> None:
    config = CONFIG + "  lease_requests_per_s: 0.01\n  lease_burst: 3\n"
    with setup_for(tmp_path, redis_url, str(tmp_path / "store" / "github.com"),
                   config) as setup:
        token = setup.token("box-1")
        client = setup.client(token)
        for _ in range(3):
            client.refresh([])
        with pytest.raises(ServerUnavailable, match="429"):
            client.refresh([])
        resp = httpx.post(setup.served.url + "/api/lease/refresh", json={"users": []},
                          headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        # Another token has its own budget.
        setup.client(setup.token("box-2")).refresh([])


def test_s3_lease_upload_complete(redis_url: str, tmp_path: Path, s3_endpoint: str,
                                  bundle: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket="github.com")
    with setup_for(tmp_path, redis_url, "s3://github.com") as setup:
        client = setup.client(setup.token("box-1"))
        setup.track("alice")
        lease_one(setup, client, "alice")
        client.put("alice", "alice/a.bundle", bundle, {"LastSync": "x"})
        head = setup.store.head("alice/a.bundle")
        assert head is not None and head.get("Worker") == "box-1"
        state = client.state("alice")  # no user object yet; the archives listed
        assert state.user is None and [o.key for o in state.objects or []] == [
            "alice/a.bundle"]
        s3_key = "alice/b.bundle"
        lock, r = keys.lock(keys.member("alice")), setup.r
        r.pexpire(lock, 1)
        wait_until(lambda: r.exists(lock) == 0, "expiry")
        with pytest.raises(LockLost):
            client.put("alice", s3_key, bundle, {})
        assert setup.store.head(s3_key) is None


def test_lease_lost_during_the_upload_lands_nothing(s: Setup, bundle: Path) -> None:
    """The lease is checked at the request's start and confirmed again at the commit (the
    fence): one that lapses while the bytes travel lands nothing."""
    client = s.client(s.token("box-1"))
    s.track("alice")
    lease_one(s, client, "alice")
    data = bundle.read_bytes()
    host, port = s.served.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    lock = keys.lock(keys.member("alice"))
    try:
        sock.sendall((f"PUT /api/lease/alice/objects/alice/a.bundle HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {client_token(client)}\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:20])
        # The server has begun receiving it (its spool file exists) before the lease lapses.
        wait_until(lambda: spooled(s.tmp), "spooling")
        s.r.pexpire(lock, 1)
        wait_until(lambda: s.r.exists(lock) == 0, "lock expiry")
        sock.sendall(data[20:])
        answer = sock.recv(65536)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 409"), answer[:300]
    assert list(s.store.list("")) == [] and spooled(s.tmp) == []


def test_client_retries_then_gives_up_when_the_server_is_away() -> None:
    from bulkbackup.testing.services import free_port

    client = LeaseClient(f"http://127.0.0.1:{free_port()}", "t", timeout_s=5, retries=2,
                         backoff_s=0.01)
    with pytest.raises(ServerUnavailable, match="POST /api/lease"):
        client.lease(1)


def test_a_large_upload_on_a_lapsed_lease_is_lease_lost(s: Setup) -> None:
    """The server refuses before reading the body; the client still learns why (not a
    connection reset retried into "unavailable")."""
    client = LeaseClient(s.served.url, s.token("box-1"), timeout_s=30, retries=1,
                         backoff_s=0.01)
    s.track("alice")
    lease_one(s, client, "alice")
    big = s.tmp / "big.bundle"
    with big.open("wb") as f:
        f.write(b"# v2 git bundle\n")
        f.write(b"x" * (12 << 20))
    lock = keys.lock(keys.member("alice"))
    s.r.pexpire(lock, 1)
    wait_until(lambda: s.r.exists(lock) == 0, "lock expiry")
    with pytest.raises(LockLost):
        client.put("alice", "alice/big.bundle", big, {})
    assert list(s.store.list("")) == []


def test_a_user_backup_through_the_server(s: Setup, forge: Forge) -> None:
    """A remote worker's UserBackup: its RemoteStore is every store access it makes (reads
    of the stored state included), a full archive then an increment, restorable."""
    forge.add_user("alice", [RepoSpec("hello", files={"README.md": b"hello\n"}),
                             RepoSpec("empty", empty=True)])
    settings = config.load(None, {**s.env, "GITHUB_API_URL": forge.url, "GITHUB_API": "rest"})
    client = s.client(s.token("box-1"))
    s.track("alice")
    broker = QuotaBroker(None, settings.github.tokens)
    job = UserBackup(settings, RemoteStore(client), broker.any_token,
                     GitWork(settings.run, s.tmp / "work"))
    github = open_github_lister(settings.github, broker, threading.Event(), job.conditions)
    try:
        for round_ in (1, 2):
            lease = client.lease(1, run_start=lease_start(s))
            assert lease.users == ["alice"]
            ((_, listing),) = in_order(github, ["alice"], settings.github.user_deadline_s)
            assert isinstance(listing, OwnerListing), listing
            result = job.sync("alice", listing)
            counts = result.counts()
            assert counts is not None and counts.syncd == 1 and not counts.error, result.line()
            assert client.complete("alice", True, counts.encode(), result.syncd, 1) \
                is Outcome.DONE
            if round_ == 1:
                forge.push("alice", "hello", {"second.txt": b"two\n"})
    finally:
        github.close()
    base = s.store.head(layout.bundle_key("alice", "hello"))
    assert base is not None and base.get("Increments") == "1"
    assert base.get("Worker") == "box-1"
    parts = [o.key for o in s.store.list(layout.parts_prefix("alice", "hello"))]
    assert len(parts) == 1
    out = run_cli("restore", "alice/hello", "--to", str(s.tmp / "restored"), env=s.env)
    assert out.returncode == 0, out.stderr
    files = git("--git-dir", str(s.tmp / "restored" / "alice" / "hello.git"), "ls-tree",
                "-r", "--name-only", "HEAD")
    assert files.split() == ["README.md", "second.txt"]


def lease_start(s: Setup) -> float:
    """A run start after every sync so far (the server's clock: Redis's)."""
    sec, usec = s.r.time()
    return float(sec) + usec / 1e6


def test_an_upload_has_its_own_body_deadline(redis_url: str, tmp_path: Path,
                                             bundle: Path) -> None:
    """serve.body_timeout_s closes a half-sent body; an archive's PUT gets
    serve.upload_timeout_s instead (a large bundle takes longer than a form)."""
    config = CONFIG + "  body_timeout_s: 1\n  upload_timeout_s: 600\n"
    with setup_for(tmp_path, redis_url, str(tmp_path / "store" / "github.com"),
                   config) as setup:
        client = setup.client(setup.token("box-1"))
        setup.track("alice")
        lease_one(setup, client, "alice")
        host, port = setup.served.url.removeprefix("http://").split(":")
        data = bundle.read_bytes()
        upload = socket.create_connection((host, int(port)), timeout=60)
        other = socket.create_connection((host, int(port)), timeout=60)
        try:
            upload.sendall((f"PUT /api/lease/alice/objects/alice/a.bundle HTTP/1.1\r\n"
                            f"Host: x\r\nAuthorization: Bearer {client_token(client)}\r\n"
                            f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:20])
            other.sendall((f"POST /api/lease/refresh HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: Bearer {client_token(client)}\r\n"
                           f"Content-Length: 100\r\n\r\n{{").encode())
            assert other.recv(65536) == b""  # closed at body_timeout_s
            upload.sendall(data[20:])  # started earlier, still open
            answer = upload.recv(65536)
        finally:
            upload.close()
            other.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert setup.store.read_bytes("alice/a.bundle") == data


# -- uploads in the background (run/uploads.py: a remote worker's RemoteStore) --------------


def bundle_file(path: Path, size: int) -> Path:
    """A file the server takes for a bundle (its first line), ``size`` bytes long."""
    path.write_bytes(b"# v2 git bundle\n" + b"x" * (size - 16))
    return path


def test_a_refused_background_upload_is_the_users_failure(redis_url: str,
                                                          tmp_path: Path) -> None:
    """A 413 in the background: the next call raises it (as a synchronous upload would
    have), until cancelled; what was handed over after it is never sent. The writer may
    delete its files once handed over: they are read from open descriptors."""
    config = "run:\n  lock_ttl_s: 60\nserve:\n  max_upload_mb: 1\n"
    with setup_for(tmp_path, redis_url, str(tmp_path / "store" / "github.com"),
                   config) as s:
        token = s.token("box-1")
        s.track("alice")
        lease_one(s, s.client(token), "alice")
        store = RemoteStore(s.client(token), Uploads(s.client(token)))
        small = bundle_file(tmp_path / "small.bundle", 100)
        big = bundle_file(tmp_path / "big.bundle", 2 << 20)
        try:
            store.put_file("alice/a.bundle", small, {})
            store.put_file("alice/b.bundle", big, {})  # over serve.max_upload_mb
            with contextlib.suppress(ServerRefused):  # raised here if it was back already
                store.put_file("alice/c.bundle", small, {})
            small.unlink()
            big.unlink()
            with pytest.raises(ServerRefused, match="HTTP 413"):
                store.flush()
            with pytest.raises(ServerRefused, match="HTTP 413"):
                store.put_bytes("alice", b"[]", {})  # the user object: never written
            assert isinstance(store.cancel_pending(), ServerRefused)
            store.flush()  # cancelled: nothing pending, no failure
        finally:
            store.close()
        assert [o.key for o in s.store.list("")] == ["alice/a.bundle"]
        assert s.store.read_bytes("alice/a.bundle")[:16] == b"# v2 git bundle\n"
        assert spooled(s.tmp) == []


def test_a_lease_lost_mid_user_fails_its_background_uploads(s: Setup, bundle: Path) -> None:
    """The lease lapses between two uploads: the second is refused by the server (403) in
    the background, and the user's next call and its flush raise LockLost; a read of a key
    with an upload pending waits for it (the worker reads what it wrote)."""
    token = s.token("box-1")
    s.track("alice")
    lease_one(s, s.client(token), "alice")
    store = RemoteStore(s.client(token), Uploads(s.client(token)))
    try:
        store.put_file("alice/a.bundle", bundle, {"LastSync": "x"})
        head = store.head("alice/a.bundle")  # pending: waited for, then asked
        assert head is not None and head.get("LastSync") == "x"
        s.r.delete(keys.lock(keys.member("alice")))
        store.put_file("alice/b.bundle", bundle, {})
        with pytest.raises(LockLost):
            store.flush()
        with pytest.raises(LockLost):
            store.head("alice/a.bundle")
        assert isinstance(store.cancel_pending(), LockLost)
    finally:
        store.close()
    assert [o.key for o in s.store.list("")] == ["alice/a.bundle"]
