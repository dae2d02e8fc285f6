"""The one bounded HTTP reader (bulkbackup/http/bounded.py) against a real local socket server
that misbehaves on purpose: headers dripped a byte at a time, a dripping body, a stalled body, a
body over the cap. Every case ends by a bound the reader enforces (the failure it raises says
which); nothing is timed.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bulkbackup.http.bounded import BoundedPool, Overdue, SlowRead, TooLarge

Script = Callable[[socket.socket, threading.Event], None]


class _Server:
    """A TCP server answering each request with ``script`` (after reading the request)."""

    def __init__(self, script: Script) -> None:
        stop = self.stop = threading.Event()
        self.connections = 0
        server_self = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server_self.connections += 1
                try:
                    while _read_request(self.request):
                        script(self.request, stop)
                except OSError:  # the reader gave up on this connection: its bound held
                    return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/x"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _read_request(sock: socket.socket) -> bool:
    """Read one request (head and Content-Length body); False at the connection's end."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(4096)
        if not got:
            return False
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return True


def _drip(sock: socket.socket, stop: threading.Event, data: bytes) -> None:
    """``data`` a byte every 50 ms (each read gets a byte long before any per-read timeout)."""
    for i in range(len(data)):
        if stop.wait(0.05):
            return
        sock.sendall(data[i : i + 1])


@pytest.fixture
def serve() -> Iterator[Callable[[Script], _Server]]:
    servers: list[_Server] = []

    def start(script: Script) -> _Server:
        servers.append(_Server(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _ask(pool: BoundedPool, server: _Server, method: str, ends_s: float, max_bytes: int,
         read_s: float | None = None) -> tuple[int, bytes]:
    status, _, body = pool.request(
        method, server.url, {}, ends=time.monotonic() + ends_s, max_bytes=max_bytes,
        read_s=read_s, body=b"{}" if method == "POST" else None)
    return status, body


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("read_s", [None, 0.5])
def test_headers_dripped_forever_end_at_the_deadline(
        serve: Callable[[Script], _Server], method: str, read_s: float | None) -> None:
    """http.client reads the status line and headers with a timeout per socket read only:
    a byte every 50 ms never trips it. The watchdog shuts the socket at the deadline."""
    server = serve(lambda sock, stop: _drip(sock, stop, b"HTTP/1.1 200 OK\r\n"
                                            + b"X-Drip: a\r\n" * 10**6))
    with pytest.raises(Overdue):
        _ask(BoundedPool(1), server, method, ends_s=1.0, max_bytes=1 << 20, read_s=read_s)


@pytest.mark.parametrize("declared", [True, False])
def test_a_dripping_body_ends_at_the_deadline(serve: Callable[[Script], _Server],
                                              declared: bool) -> None:
    """Headers whole, then a body a byte every 50 ms: no read waits long, the whole answer
    does. Without a Content-Length the shut socket reads as the body's end: still Overdue,
    never a truncated body taken as whole."""
    body = b"x" * 10**6
    head = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) if declared
            else b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n")

    def script(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(head)
        _drip(sock, stop, body)

    server = serve(script)
    with pytest.raises(Overdue):
        _ask(BoundedPool(1), server, "GET", ends_s=1.0, max_bytes=1 << 20, read_s=0.5)


def test_a_stalled_body_is_a_slow_read_before_the_deadline(
        serve: Callable[[Script], _Server]) -> None:
    """A read waiting longer than read_s, long before the deadline: a stall (git's low-speed
    rule counts it as stalled), not a timeout of the whole answer."""
    def script(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        stop.wait()

    server = serve(script)
    with pytest.raises(SlowRead):
        _ask(BoundedPool(1), server, "GET", ends_s=120.0, max_bytes=1 << 20, read_s=0.3)


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_cap_is_refused(serve: Callable[[Script], _Server],
                                        declared: bool) -> None:
    """A declared Content-Length over the cap is refused before any of the body is read (the
    server then sends nothing: a read would wait until the far deadline); an undeclared body
    is refused as the bytes read pass the cap."""
    cap = 1 << 20

    def script(sock: socket.socket, stop: threading.Event) -> None:
        if declared:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (cap + 1))
            stop.wait()
        else:
            sock.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            for _ in range(4 * cap // 65536):
                sock.sendall(b"y" * 65536)

    server = serve(script)
    with pytest.raises(TooLarge):
        _ask(BoundedPool(1), server, "GET", ends_s=120.0, max_bytes=cap)


def test_whole_answers_reuse_the_connection(serve: Callable[[Script], _Server]) -> None:
    """Answers read whole leave the connection to the next request, and the watchdog of an
    answer done never shuts it later (the answers' deadlines pass while it is reused)."""
    def script(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    server = serve(script)
    pool = BoundedPool(1)
    answers = [_ask(pool, server, method, ends_s=1.0, max_bytes=5)
               for method in ("GET", "POST", "GET")]
    passed = time.monotonic() + 1.2
    while time.monotonic() < passed:  # every earlier answer's deadline has passed
        threading.Event().wait(passed - time.monotonic())
    answers.append(_ask(pool, server, "GET", ends_s=10.0, max_bytes=5))
    assert answers == [(200, b"hello")] * 4
    assert server.connections == 1
