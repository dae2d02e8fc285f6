"""`bulkbackup serve` under hostile clients: stalled downloads, half-sent requests.

Each test starts its own real `bulkbackup serve` process and attacks it with raw sockets; the
bounds asserted are bytes and open files, never elapsed time (the waits have generous
deadlines and only decide when to look).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import redis

from bulkbackup.archive import layout
from bulkbackup.queue import keys
from tests.helpers import SERVE_TOKEN, Served, base_env, start_serve, stop_serve

MIB = 1 << 20
MB = 1000 * 1000
# Far more than one stalled client may hold (the bug held ~2.5 MiB each); small enough to
# write to moto quickly.
BIG_BYTES = 16 * MIB
SMALL = b"small bundle\n" * 1000


def rss_bytes(pid: int) -> int:
    """The process's resident memory (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_for(check: Callable[[], bool], deadline_s: float) -> bool:
    """Whether ``check`` became true before the (generous) deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


def stalled_socket(served: Served, request: bytes) -> socket.socket:
    """A connection that sends ``request`` and never reads: a tiny receive buffer, so
    the server's writes stop at once."""
    host, port = served.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(request)
    return sock


@contextlib.contextmanager
def sockets_closed(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(params=["local", "s3"])
def big_served(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
               ) -> Iterator[Served]:
    """A serve process whose store (local or S3) holds alice/big.bundle (BIG_BYTES)."""
    big = os.urandom(MIB) * (BIG_BYTES // MIB)
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        env = {**base_env(tmp_path, redis_url, "s3://github.com"), **s3_env(endpoint)}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="github.com")
        s3.put_object(Bucket="github.com", Key="alice/big.bundle", Body=big)
        s3.put_object(Bucket="github.com", Key="alice/small.bundle", Body=SMALL)
    else:
        store = tmp_path / "store"
        (store / "alice").mkdir(parents=True)
        (store / "alice" / "big.bundle").write_bytes(big)
        (store / "alice" / "small.bundle").write_bytes(SMALL)
        env = base_env(tmp_path, redis_url, str(store))
    served = start_serve(env, tmp_path / "serve.log")
    try:
        yield served
    finally:
        stop_serve(served)


def test_stalled_downloads_hold_bounded_memory_and_give_it_back(big_served: Served) -> None:
    served = big_served
    pid = served.proc.pid
    before = rss_bytes(pid)
    request = b"GET /users/alice/big.bundle HTTP/1.1\r\nHost: x\r\n\r\n"
    clients = 200
    with sockets_closed([]) as socks:
        for _ in range(clients):
            socks.append(stalled_socket(served, request))
        # Every stalled client has been answered as far as its socket takes.
        assert wait_for(lambda: "alice/big.bundle" in served.log.read_text() and
                        served.log.read_text().count("big.bundle") >= clients, 120), \
            served.log.read_text()[-2000:]
        peak = rss_bytes(pid)
        # Another client is served meanwhile, in full.
        # (A generous timeout: moto answers slowly with 200 streams open on a loaded machine.)
        small = served.get("/users/alice/small.bundle", timeout=300)
        assert small.status_code == 200 and small.content == SMALL
        peak = max(peak, rss_bytes(pid))
        print(f"rss before {before >> 20} MiB, with {clients} stalled {peak >> 20} MiB")
        # Before the fix: ~2.5 MiB each (+500 MiB in all), never given back.
        assert peak - before < 96 * MIB and peak < 300 * MB, (before, peak)
    # Gone: what they held goes back, or was little (measured: local +26 MiB at the peak,
    # +28 after; S3 +57-61 at the peak, +11-62 when first seen under the bound; +77-95 with
    # 128 KiB read ahead as one piece, s3_stream.py).
    assert wait_for(lambda: rss_bytes(pid) - before < 64 * MIB and rss_bytes(pid) < 200 * MB,
                    60), (before, rss_bytes(pid))
    print(f"rss after {rss_bytes(pid) >> 20} MiB")


HALF_REQUEST = b"GET /api/stats HT"


def limit_open_files(n: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return preexec


def until_closed(sock: socket.socket) -> bytes | None:
    """What the server sent on ``sock`` before closing it; None when it was still open at
    the socket's timeout."""
    got = b""
    try:
        while data := sock.recv(4096):
            got += data
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return got


def served_eventually(served: Served, path: str, deadline_s: float) -> bool:
    def answered() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return served.get(path, timeout=deadline_s).status_code == 200
        return False
    return wait_for(answered, deadline_s)


def test_half_sent_requests_are_closed_and_others_served(redis_url: str, tmp_path: Path
                                                         ) -> None:
    """More half-sent requests than serve has open files: each is closed at its deadline
    and a normal client is then served."""
    env = base_env(tmp_path, redis_url, str(tmp_path / "store"))
    cfg = Path(env["BULKBACKUP_CONFIG"])
    cfg.write_text(cfg.read_text() + "serve:\n  header_timeout_s: 2\n  body_timeout_s: 2\n")
    (tmp_path / "store").mkdir()
    served = start_serve({**env, "BULKBACKUP_ADMIN_TOKEN": SERVE_TOKEN}, tmp_path / "serve.log",
                         preexec_fn=limit_open_files(256))
    try:
        with sockets_closed([]) as socks:
            for _ in range(300):
                socks.append(stalled_socket(served, HALF_REQUEST))
            # Before the deadlines no one else was served while they stayed (under uvloop a
            # new connection is accepted and closed at once; under asyncio it waits).
            assert served_eventually(served, "/api/stats", 90)
            for sock in socks[:20]:
                sock.settimeout(60)
                assert until_closed(sock) == b""
        # A body that stops half-way is closed too (its headers were in time).
        with sockets_closed([stalled_socket(served, (
                b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + SERVE_TOKEN.encode() + b"\r\n"
                b"Content-Length: 100\r\n\r\n{\"logins\":"))]) as (sock,):
            sock.settimeout(60)
            assert until_closed(sock) == b""
        # A request sent whole, however slowly it is then answered, is not cut.
        assert served.get("/healthz").status_code == 200
        assert "Traceback" not in served.log.read_text()
    finally:
        stop_serve(served)


# -- hostile data in Redis and the store ------------------------------------------------------


@pytest.fixture
def plain(redis_url: str, tmp_path: Path) -> Iterator[tuple[Served, redis.Redis]]:
    """serve on an empty Redis and a local store holding alice/hello.bundle."""
    store = tmp_path / "store"
    (store / "alice").mkdir(parents=True)
    (store / "alice" / "hello.bundle").write_bytes(SMALL)
    env = {**base_env(tmp_path, redis_url, str(store)), "BULKBACKUP_ADMIN_TOKEN": SERVE_TOKEN}
    served = start_serve(env, tmp_path / "serve.log")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield served, client
    finally:
        stop_serve(served)
        client.close()


PAGES = ("/", "/api/stats", "/users", "/api/users", "/users/far", "/api/users/far",
         "/workers", "/api/workers", "/metrics")


def test_out_of_range_numbers_in_redis_are_unknown(plain: tuple[Served, redis.Redis]) -> None:
    served, r = plain
    r.zadd(keys.TRACKED, {keys.member("far"): 1e17, keys.member("near"): 1000.0})
    r.zadd(keys.WORKERS, {"w1": time.time()})
    r.set(keys.worker("w1"), json.dumps({"host": "h", "since": 1e300, "seen": 1e300,
                                         "users_per_min": 1e300, "bytes_per_min": 2**64,
                                         "users": "inf"}))
    r.hset(keys.LAST_RUN, mapping={"started_at": "1e308", "ended_at": "1e308",
                                   "bytes": str(2**64), "users": "9" * 5000})
    r.hset(keys.LAST_STATS, mapping={"json": json.dumps({"bytes": {
        "bundles": 2**64, "zips": 1, "increments": 0}, "repositories": {"archived": 1e300}}),
        "at": "1e308"})
    for path in PAGES:
        resp = served.get(path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
    stats = served.get("/api/stats").json()
    assert stats["bytes"] is None and stats["repos"] is None and stats["stats_at"] is None
    assert stats["last_run"]["started_at"] is None and stats["last_run"]["bytes"] is None
    assert stats["last_run"]["users"] is None
    users = {u["login"]: u for u in served.get("/api/users").json()["users"]}
    assert users["far"]["last_sync"] is None and users["near"]["last_sync"] is not None
    worker = served.get("/api/workers").json()["workers"][0]
    assert worker["since"] is None and worker["users_per_min"] == 0
    assert worker["bytes_per_min"] == 0
    assert "Traceback" not in served.log.read_text()


def test_an_invalid_member_at_a_page_boundary_is_skipped(
        plain: tuple[Served, redis.Redis]) -> None:
    served, r = plain
    r.zadd(keys.TRACKED, {keys.member("a-user"): 4.0, keys.member("bad name!"): 3.0,
                          "no-prefix": 2.5, keys.member("b-user"): 2.0,
                          keys.member("x" * 300): 1.5, keys.member("c-user"): 1.0})
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        doc = served.get("/api/users", params={"cursor": cursor, "limit": 1}).json()
        seen += [u["login"] for u in doc["users"]]
        if not doc["next"]:
            break
        cursor = doc["next"]
    # Before: {"users": [], "next": null} at "bad name!", and the rest unreachable.
    assert seen == ["a-user", "b-user", "c-user"]
    assert served.get("/users", params={"cursor": cursor}).status_code == 200
    assert served.get("/api/users", params={"cursor": "1~" + "%" * 10}).status_code == 400


def test_a_deeply_nested_body_is_a_400(plain: tuple[Served, redis.Redis]) -> None:
    served, _ = plain
    for depth in (1000, 100_000):
        body = '{"logins": [' + "[" * depth + "]" * depth + "]}"
        resp = httpx.post(served.url + "/api/users", content=body.encode(), timeout=30,
                          headers={"Authorization": f"Bearer {SERVE_TOKEN}"})
        assert resp.status_code == 400, (depth, resp.status_code, resp.text[:200])
        assert "\n" not in resp.json()["error"]


def test_ranges_with_huge_numbers(plain: tuple[Served, redis.Redis]) -> None:
    served, _ = plain
    url = "/users/alice/hello.bundle"
    huge = "9" * 20
    for wanted in (f"bytes=0-{huge}", f"bytes=-{huge}", f"bytes=0-{'9' * 5000}"):
        # RFC 9110 14.1.1: a last position past the end means the end; a suffix longer than
        # the object means all of it.
        resp = served.get(url, headers={"Range": wanted})
        assert resp.status_code == 206 and resp.content == SMALL, wanted[:40]
        assert resp.headers["content-range"] == f"bytes 0-{len(SMALL) - 1}/{len(SMALL)}"
    for wanted in (f"bytes={huge}-", f"bytes={huge}-{huge}", f"bytes={'9' * 5000}-"):
        resp = served.get(url, headers={"Range": wanted})  # starts past any object
        assert resp.status_code == 416, wanted[:40]
        assert resp.headers["content-range"] == f"bytes */{len(SMALL)}"


def test_invalid_repository_names_are_not_listed_and_presigned_parts_keep_their_name(
        s3_endpoint: str, redis_url: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="github.com")
    s3.put_object(Bucket="github.com", Key="alice", Body=b"[]",
                  Metadata={"lastsync": "2026-01-01T00:00:00Z"})
    for name in ("hello", "bad name", "x" * 101, "a%2fb"):
        s3.put_object(Bucket="github.com", Key=f"alice/{name}.bundle", Body=SMALL,
                      Metadata={"lastsync": "2026-01-01T00:00:00Z"})
    part = layout.part_key("alice", "hello", "20260101T000000000000Z", 1)
    s3.put_object(Bucket="github.com", Key=part, Body=SMALL)
    env = {**base_env(tmp_path, redis_url, "s3://github.com"), **s3_env(s3_endpoint)}
    cfg = Path(env["BULKBACKUP_CONFIG"])
    cfg.write_text(cfg.read_text() + "serve:\n  redirect_downloads: true\n")
    served = start_serve(env, tmp_path / "serve.log")
    try:
        names = [r["name"] for r in served.get("/api/users/alice").json()["repositories"]]
        assert names == ["hello"]
        page = served.get("/users/alice").text
        assert "bad name" not in page and "a%2fb" not in page and "x" * 101 not in page
        resp = served.get("/users/alice/hello.bundle.d/20260101T000000000000Z/000001.bundle")
        assert resp.status_code == 302
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(resp.headers["location"]).query)
        assert query["response-content-disposition"] == [
            'attachment; filename="hello.20260101T000000000000Z.000001.bundle"']
        with urllib.request.urlopen(resp.headers["location"], timeout=30) as f:
            assert f.read() == SMALL
    finally:
        stop_serve(served)
