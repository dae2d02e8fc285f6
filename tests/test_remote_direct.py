"""Remote workers' archives straight to the bucket (web/lease_uploads.py, run/uploads.py):
a real serve on moto_server (S3) and on the local store, a real redis-server, the lease
client and the bucket over HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulkbackup.archive import layout
from bulkbackup.errors import LockLost
from bulkbackup.queue import keys
from bulkbackup.run.lease_client import LeaseClient, ServerRefused
from bulkbackup.run.remote_store import RemoteStore
from bulkbackup.run.uploads import Uploads
from bulkbackup.store.fenced import FencedStore, StopFence
from tests import test_remote_workers
from tests.test_remote_workers import CONFIG, Setup, lease_one, setup_for, spooled

bundle = test_remote_workers.bundle  # a fixture: a real git bundle


# Every archive is offered, however small (the default leaves those under 2 MiB to serve).
DIRECT = CONFIG + "  direct_uploads_min_kb: 0\n"


@pytest.fixture
def s3(redis_url: str, tmp_path: Path, s3_endpoint: str) -> Iterator[Setup]:
    with setup_for(tmp_path, redis_url, "s3://github.com", DIRECT) as setup:
        yield setup


def leased(s: Setup, login: str = "alice") -> LeaseClient:
    client = s.client(s.token("box-1"))
    s.track(login)
    lease_one(s, client, login)
    return client


def put(url: str, data: bytes) -> int:
    """What any HTTP client does with the URL: no token."""
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status)


def staged(s: Setup) -> list[str]:
    return [o.key for o in s.store.list(layout.STAGING_FOLDER + "/")]


def test_an_archive_goes_to_the_bucket_and_serve_commits_it(s3: Setup, bundle: Path) -> None:
    client = leased(s3)
    key = layout.bundle_key("alice", "hello")
    data = bundle.read_bytes()
    offer = client.offer("alice", key, len(data))
    assert offer.offered and offer.staging.startswith(".staging/alice/")
    assert not offer.url.startswith(s3.served.url)  # the bucket's URL, not serve's
    assert put(offer.url, data) == 200
    assert s3.store.head(key) is None  # staged, not yet an archive
    client.commit("alice", key, offer.staging, len(data), {"LastSync": "x", "Worker": "forged"})
    head = s3.store.head(key)
    assert head is not None and head.size == len(data) and s3.store.read_bytes(key) == data
    assert head.get("Worker") == "box-1" and head.get("LastSync") == "x"
    assert staged(s3) == [] and spooled(s3.tmp) == []  # nothing went through serve's spool
    # The user object is carried (small, checked whole); so is what no CopyObject can copy.
    assert client.offer("alice", "alice", 10).url == ""
    assert client.offer("alice", "alice", 10).offered


def test_what_the_bucket_holds_is_checked_before_it_lands(s3: Setup, bundle: Path) -> None:
    client = leased(s3)
    key, data = layout.bundle_key("alice", "hello"), bundle.read_bytes()
    cases = [(b"<html>not a bundle</html>", len(data), "HTTP 400"),  # the size differs
             (b"PK\x03\x04" + b"x" * 100, 104, "HTTP 422"),  # a zip under a .bundle key
             (None, len(data), "HTTP 400: nothing was uploaded")]
    for body, declared, why in cases:
        offer = client.offer("alice", key, declared)
        if body is not None:
            put(offer.url, body)
        with pytest.raises(ServerRefused, match=why):
            client.commit("alice", key, offer.staging, declared, {})
        assert s3.store.head(key) is None and staged(s3) == []
    with pytest.raises(ServerRefused, match="HTTP 413"):  # refused before a byte is sent
        client.offer("alice", key, 10 << 30)


def test_a_token_commits_only_its_own_users_staging(s3: Setup, bundle: Path) -> None:
    client = leased(s3)
    data = bundle.read_bytes()
    offer = client.offer("alice", layout.bundle_key("alice", "a"), len(data))
    put(offer.url, data)
    with pytest.raises(LockLost):  # 403: bob is not leased by this token
        client.offer("bob", layout.bundle_key("bob", "a"), len(data))
    with pytest.raises(LockLost):  # 403: not a staging key of alice
        client.commit("alice", layout.bundle_key("alice", "a"),
                      offer.staging.replace("/alice/", "/bob/"), len(data), {})
    for elsewhere in ("alice/b.bundle", ".staging/alice/..", offer.staging + "/x"):
        with pytest.raises(LockLost):
            client.commit("alice", layout.bundle_key("alice", "a"), elsewhere, len(data), {})
    # The lease lapses before the commit: 403 from the lookup, nothing lands.
    s3.r.delete(keys.lock(keys.member("alice")))
    with pytest.raises(LockLost):
        client.commit("alice", layout.bundle_key("alice", "a"), offer.staging, len(data), {})
    assert s3.store.head(layout.bundle_key("alice", "a")) is None


def test_the_worker_sends_archives_direct_and_its_user_object_through_serve(
        s3: Setup, bundle: Path) -> None:
    client = leased(s3)
    uploads = Uploads(client)
    remote = RemoteStore(client, uploads)
    store = FencedStore(remote, StopFence())
    key = layout.bundle_key("alice", "hello")
    store.put_file(key, bundle, {"LastSync": "y"})
    store.put_bytes("alice", b'[{"name": "hello"}]', {"LastSync": "y"})  # waits for it
    assert uploads.direct
    head = s3.store.head(key)
    assert head is not None and head.get("Worker") == "box-1" and head.get("LastSync") == "y"
    assert s3.store.read_bytes(key) == bundle.read_bytes() and staged(s3) == []
    remote.close()


def test_a_local_store_offers_none_and_the_worker_stops_asking(
        redis_url: str, tmp_path: Path, bundle: Path) -> None:
    with setup_for(tmp_path, redis_url, str(tmp_path / "store" / "github.com")) as s:
        client = leased(s)
        offer = client.offer("alice", layout.bundle_key("alice", "a"), 10)
        assert not offer.offered and offer.url == ""
        uploads = Uploads(client)
        store = RemoteStore(client, uploads)
        store.put_file(layout.bundle_key("alice", "a"), bundle, {})
        store.flush()
        assert not uploads.direct  # asked once, then carried without asking
        assert s.store.read_bytes(layout.bundle_key("alice", "a")) == bundle.read_bytes()
        store.close()


def test_direct_uploads_off_carry_everything(redis_url: str, tmp_path: Path,
                                             s3_endpoint: str, bundle: Path) -> None:
    config = CONFIG + "  direct_uploads: false\n"
    with setup_for(tmp_path, redis_url, "s3://github.com", config) as s:
        client = leased(s)
        assert not client.offer("alice", layout.bundle_key("alice", "a"), 10).offered


class PresignRefusingRelay:
    """A TCP relay to the S3 endpoint that answers 403 to any request signed in its URL (a
    presigned one), as a bucket whose policy admits serve's host alone would: what serve
    sends with its credentials passes."""

    def __init__(self, target: str, drop: bool = False) -> None:
        self.target = target.removeprefix("http://").split(":")
        self.drop = drop  # close the connection instead of answering (an unreachable bucket)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            first = client.recv(1 << 16)
            if b"Signature=" in first.split(b"\r\n", 1)[0]:  # SigV2 or SigV4 (X-Amz-)
                self.refused += 1
                if not self.drop:
                    client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n")
                return
            with socket.create_connection((self.target[0], int(self.target[1]))) as up:
                up.sendall(first)
                pump = threading.Thread(target=_copy, args=(up, client), daemon=True)
                pump.start()
                _copy(client, up)
                pump.join(30)


def _copy(src: socket.socket, dest: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dest.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dest.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("drop", [False, True], ids=["403", "cut"])
def test_a_bucket_that_refuses_this_host_turns_direct_uploads_off(
        redis_url: str, tmp_path: Path, s3_endpoint: str, bundle: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, drop: bool) -> None:
    """serve's URL is refused by the bucket (403, as a bucket policy for serve's host
    alone would; or the connection cut): the archive goes through serve instead, and so do
    the next ones. The warning names no URL (its signature is a credential)."""
    relay = PresignRefusingRelay(s3_endpoint, drop)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", relay.url)  # serve and this test's own reads
    with setup_for(tmp_path, redis_url, "s3://github.com", DIRECT) as s:
        client = leased(s)
        uploads = Uploads(client)
        store = RemoteStore(client, uploads)
        for name in ("a", "b"):
            store.put_file(layout.bundle_key("alice", name), bundle, {})
        store.flush()
        assert not uploads.direct and relay.refused == 1  # tried once, then carried
        assert "took no upload" in caplog.text and "Signature" not in caplog.text
        for name in ("a", "b"):
            assert s.store.read_bytes(layout.bundle_key("alice", name)) == bundle.read_bytes()
        assert staged(s) == []
        store.close()


def test_archives_under_the_minimum_go_through_serve_without_asking(
        redis_url: str, tmp_path: Path, s3_endpoint: str, bundle: Path) -> None:
    config = CONFIG + "  direct_uploads_min_kb: 1\n"  # the bundle is smaller
    assert bundle.stat().st_size < 1024
    with setup_for(tmp_path, redis_url, "s3://github.com", config) as s:
        client = leased(s)
        offer = client.offer("alice", layout.bundle_key("alice", "a"), 10)
        assert offer.offered and offer.url == "" and offer.min_size == 1024
        uploads = Uploads(client)
        store = RemoteStore(client, uploads)
        for name in ("a", "b"):
            store.put_file(layout.bundle_key("alice", name), bundle, {})
        store.flush()
        assert uploads.direct and uploads.direct_min == 1024  # learnt once, asked once
        log = (tmp_path / "serve.log").read_text()
        assert log.count('/uploads HTTP/1.1" 200') == 2  # the test's offer, and the first
        for name in ("a", "b"):
            assert s.store.read_bytes(layout.bundle_key("alice", name)) == bundle.read_bytes()
        store.close()


def test_bad_upload_requests_get_one_clear_answer(s3: Setup) -> None:
    """What a broken or hostile worker may send: each answered 4xx with a reason, nothing
    signed, nothing written."""
    holder = s3.token("box-1")
    s3.track("carol")
    lease_one(s3, s3.client(holder), "carol")
    token = s3.token("box-3")  # a live token that holds no lease
    url = s3.served.url + "/api/lease/carol/uploads"
    bodies = [(b"[]", 400), (b'{"key": "carol/a.bundle"}', 400),
              (b'{"key": "carol/a.bundle", "size": -1}', 400),
              (b'{"key": "carol/a.bundle", "size": true}', 400),
              (b'{"key": 5, "size": 10}', 400),
              (b'{"key": "carol/notes.txt", "size": 10}', 400),  # not the layout's
              (b'{"key": "alice/a.bundle", "size": 10}', 403),  # another user's
              (b"x" * (1 << 20), 413)]  # a JSON body over 64 KiB
    for body, status in bodies:
        got = httpx.post(url, content=body, timeout=30,
                         headers={"Authorization": f"Bearer {holder}"})
        assert got.status_code == status, (body[:60], got.text)
        assert "error" in got.json()
    # A token that holds no lease on carol: 403; no token: 401.
    got = httpx.post(url, json={"key": "carol/a.bundle", "size": 10}, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 403
    assert httpx.post(url, json={"key": "carol/a.bundle", "size": 10},
                      timeout=30).status_code == 401
    assert staged(s3) == [] and [o.key for o in s3.store.list("carol/")] == []
