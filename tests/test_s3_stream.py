"""serve's S3 reader (web/s3_stream.py) on its own: a GET signed by the store, against the real
S3 API server (moto_server) and against a scripted hostile HTTP server that answers each
connection as a test says (404, 5xx then success, another range, endless or stalled headers,
a body that stalls, a body longer than asked). The whole serve path is in test_serve.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import boto3
import pytest

from bulkbackup.config import StoreSettings
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.store.s3 import S3Store
from bulkbackup.web import s3_stream

Handler = Callable[[socket.socket, bytes], None]
SIGNATURE = "X-Amz-Signature=0123456789abcdef"


class Scripted:
    """An HTTP server on 127.0.0.1 whose n-th connection is answered by the n-th handler."""

    def __init__(self, handlers: list[Handler]) -> None:
        self.handlers = handlers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/b/k?{SIGNATURE}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for handler in self.handlers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    got = conn.recv(65536)
                    if not got:
                        break
                    request += got
                self.requests.append(request)
                with contextlib.suppress(OSError):
                    handler(conn, request)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Handler]], Scripted]]:
    made: list[Scripted] = []

    def make(handlers: list[Handler]) -> Scripted:
        made.append(Scripted(handlers))
        return made[-1]

    yield make
    for server in made:
        server.close()


def answer(status: int, body: bytes = b"", extra: str = "") -> Handler:
    def handle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}"
                     f"Connection: close\r\n\r\n".encode() + body)
    return handle


def ranged(body: bytes, start: int, total: int) -> Handler:
    return answer(206, body, f"Content-Range: bytes {start}-{start + len(body) - 1}/{total}\r\n")


async def read_all(fetch: s3_stream.Fetch) -> bytes:
    await fetch.open()
    return b"".join([piece async for piece in fetch.pieces()])


def fetch(url: str, start: int, length: int) -> s3_stream.Fetch:
    return s3_stream.Fetch(url, "alice/r.bundle", start, length)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short bounds, so the tests of stalls end in seconds (the real ones are 10-120 s)."""
    monkeypatch.setattr(s3_stream, "HEADERS_S", 1.0)
    monkeypatch.setattr(s3_stream, "READ_S", 1.0)
    monkeypatch.setattr(s3_stream, "RETRY_BASE_S", 0.01)


def test_a_signed_get_of_moto_reads_whole_and_ranged(s3_endpoint: str) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="github.com")
    store = S3Store(StoreSettings(url="s3://github.com"))
    data = os.urandom(3 * 65536 + 17)
    store.put_bytes("alice/r.bundle", data, {})
    url = store.signed_get("alice/r.bundle", 60)
    assert asyncio.run(read_all(fetch(url, 0, len(data)))) == data
    assert asyncio.run(read_all(fetch(url, 65530, 70000))) == data[65530:135530]
    gone = store.signed_get("alice/gone.bundle", 60)
    with pytest.raises(NotFound):
        asyncio.run(read_all(fetch(gone, 0, 10)))
    store.close()


def test_a_get_reads_the_version_it_was_described_by(s3_endpoint: str) -> None:
    # Rewritten between the HEAD and the GET: the same size, other bytes. Sent under the
    # first version's ETag and Last-Modified, they would be spliced onto a resumed download.
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="github.com")
    store = S3Store(StoreSettings(url="s3://github.com"))
    first, second = os.urandom(70000), os.urandom(70000)
    store.put_bytes("alice/r.bundle", first, {})
    described = store.head("alice/r.bundle")
    assert described is not None and described.version.startswith('"')
    url = store.signed_get("alice/r.bundle", 60)
    pinned = s3_stream.Fetch(url, "alice/r.bundle", 0, len(first), described.version)
    assert asyncio.run(read_all(pinned)) == first
    store.put_bytes("alice/r.bundle", second, {})
    for start in (0, 1000):  # whole or a range (a resumed download)
        again = s3_stream.Fetch(url, "alice/r.bundle", start, 100, described.version)
        with pytest.raises(StoreError, match="changed since it was described"):
            asyncio.run(read_all(again))
    now = store.head("alice/r.bundle")
    assert now is not None and now.version != described.version
    assert asyncio.run(read_all(s3_stream.Fetch(url, "alice/r.bundle", 0, len(second),
                                                now.version))) == second
    store.close()


def test_failures_before_the_body_are_retried_then_reported_without_the_url(
        scripted: Callable[[list[Handler]], Scripted], fast: None) -> None:
    server = scripted([answer(503), answer(500), ranged(b"abc", 5, 100)])
    assert asyncio.run(read_all(fetch(server.url, 5, 3))) == b"abc"
    assert server.requests[-1].startswith(b"GET /b/k?" + SIGNATURE.encode())
    assert b"Range: bytes=5-7\r\n" in server.requests[-1]
    server = scripted([answer(503)] * s3_stream.ATTEMPTS)
    with pytest.raises(StoreError) as failed:
        asyncio.run(read_all(fetch(server.url, 0, 3)))
    assert str(failed.value) == "cannot read 'alice/r.bundle': HTTP 503"
    # A 403 (an expired signature) is not retried; the message never carries the URL.
    server = scripted([answer(403), answer(200, b"abc")])
    with pytest.raises(StoreError) as failed:
        asyncio.run(read_all(fetch(server.url, 0, 3)))
    assert len(server.requests) == 1 and "Signature" not in str(failed.value)


def test_another_range_is_refused_and_a_longer_body_is_cut(
        scripted: Callable[[list[Handler]], Scripted], fast: None) -> None:
    server = scripted([ranged(b"xyz", 0, 100)])
    with pytest.raises(StoreError, match="another range"):
        asyncio.run(read_all(fetch(server.url, 10, 3)))
    server = scripted([ranged(b"0123456789", 0, 100)])
    assert asyncio.run(read_all(fetch(server.url, 0, 4))) == b"0123"


def test_stalled_headers_a_stalled_body_and_endless_headers_end_within_the_bounds(
        scripted: Callable[[list[Handler]], Scripted], fast: None) -> None:
    def silent(conn: socket.socket, _: bytes) -> None:
        time.sleep(3)

    def stalls_midway(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 206 X\r\nContent-Range: bytes 0-99/100\r\n"
                     b"Content-Length: 100\r\n\r\n" + b"a" * 10)
        time.sleep(3)

    def endless_headers(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 X\r\n")
        for i in range(20_000):
            conn.sendall(f"X-{i}: {'v' * 60}\r\n".encode())

    began = time.monotonic()
    server = scripted([silent] * s3_stream.ATTEMPTS)
    with pytest.raises(StoreError, match="timed out"):
        asyncio.run(read_all(fetch(server.url, 0, 100)))
    server = scripted([stalls_midway])
    pieces: list[bytes] = []

    async def read_some() -> None:
        one = fetch(server.url, 0, 100)
        await one.open()
        async for piece in one.pieces():
            pieces.append(piece)

    with pytest.raises(StoreError, match="timed out"):
        asyncio.run(read_some())
    assert b"".join(pieces) == b"a" * 10  # what came before the stall was passed on
    server = scripted([endless_headers] * s3_stream.ATTEMPTS)
    with pytest.raises(StoreError, match="headers too long"):
        asyncio.run(read_all(fetch(server.url, 0, 100)))
    assert time.monotonic() - began < 30


def test_a_proxy_in_the_environment_leaves_the_read_to_boto3(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy",
                 "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not s3_stream.proxied("http://s3.example/b/k")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert s3_stream.proxied("http://s3.example/b/k")
    assert not s3_stream.proxied("https://s3.example/b/k")
    monkeypatch.setenv("NO_PROXY", "s3.example")
    assert not s3_stream.proxied("http://s3.example/b/k")


def test_a_slow_body_that_keeps_coming_is_read_whole_and_a_stall_after_it_ends_it(
        scripted: Callable[[list[Handler]], Scripted], fast: None) -> None:
    """READ_S bounds each wait for bytes, not the whole body: one watchdog a connection,
    armed again from the last bytes that came."""
    def trickles(stall_s: float) -> Handler:
        def handle(conn: socket.socket, _: bytes) -> None:
            conn.sendall(b"HTTP/1.1 206 X\r\nContent-Range: bytes 0-5/6\r\n"
                         b"Content-Length: 6\r\n\r\n")
            for i in range(5):  # 5 x 0.5 s: longer than READ_S in all, each gap within it
                time.sleep(0.5)
                conn.sendall(b"%d" % i)
            time.sleep(stall_s)
            conn.sendall(b"5")
        return handle

    server = scripted([trickles(0.5)])
    assert asyncio.run(read_all(fetch(server.url, 0, 6))) == b"012345"
    server = scripted([trickles(8.0)])
    began = time.monotonic()
    with pytest.raises(StoreError, match="timed out"):
        asyncio.run(read_all(fetch(server.url, 0, 6)))
    # Ended by the bound (2.5 s of trickle + READ_S), not by the server's last byte (10.5 s).
    assert time.monotonic() - began < 7
