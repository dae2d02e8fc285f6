"""HTTP answers bounded in time and size, whatever the server does: the one reader under
forge/'s REST and GraphQL clients and git/'s pack fetch.

urllib3's read timeout applies to each socket read: a server that drips a byte at a time
holds a request forever (headers included: http.client reads them line by line), and a huge
body is read whole. An answer here has four bounds:
- a deadline for the whole answer (``ends``, time.monotonic()): a watchdog shuts the answer's
  socket down at it, whatever http.client is doing (sending, reading the status line and
  headers), and no body read may wait past it (`Overdue`);
- a per-read timeout (``read_s``): one socket read waiting longer is a stall (`SlowRead`),
  what a client with a low-speed rule (git's) calls stalled;
- a byte cap on the body: a declared Content-Length above it, or more bytes read (`TooLarge`);
- no retries, no redirects followed (the caller decides what a 3xx means).
Other failures (refused, reset, a malformed answer) are urllib3's HTTPError (or OSError).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
import urllib3.connection

CHUNK = 1 << 16  # bytes per read of a body


class Overdue(Exception):
    """The answer did not arrive whole by its deadline (to be treated as a timeout)."""

    def __init__(self) -> None:
        super().__init__("no whole answer by its deadline")


class SlowRead(Exception):
    """One socket read waited longer than the answer's per-read timeout (a stall)."""

    def __init__(self, read_s: float) -> None:
        super().__init__(f"a read waited more than {read_s:g}s")


class TooLarge(Exception):
    """The answer's body is larger than allowed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"an answer larger than {max_bytes} bytes")


class _Watchdog:
    """Shuts every socket it watches down at ``ends`` unless stopped first."""

    def __init__(self, ends: float) -> None:
        self.fired = False
        self._socks: list[socket.socket] = []
        self._mu = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(max(ends - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._mu:
            if sock not in self._socks:
                self._socks.append(sock)
            late = self.fired
        if late:
            _shut(sock)

    def stop(self) -> None:
        # Under the lock: once stopped, a timer already running shuts nothing (the
        # connection may be back in the pool, serving another answer).
        with self._mu:
            self._stopped = True
        self._timer.cancel()

    def _fire(self) -> None:
        with self._mu:
            if self._stopped:
                return
            self.fired = True
            socks = list(self._socks)
        for sock in socks:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown: SSLSocket.shutdown would drop its TLS state first.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


# The watchdog of the answer being asked for on this thread: a connection's socket is
# watched as it connects (a new connection) or sends (a pooled one).
_asking = threading.local()


def _watch(sock: socket.socket | None) -> None:
    dog: _Watchdog | None = getattr(_asking, "dog", None)
    if dog is not None and isinstance(sock, socket.socket):
        dog.watch(sock)


class _Watched(urllib3.connection.HTTPConnection):
    """A connection whose socket the asking thread's watchdog shuts at the deadline (for
    http and, through _HTTPSConnection's bases, https)."""

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)


class _HTTPConnection(_Watched):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class Answer:
    """One answer: status and headers arrived by its deadline; the body read under its
    bounds (`read1`, `read_all`). Close it (or use `with`): a body read whole frees the
    connection for the next request, anything else closes it."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, dog: _Watchdog, ends: float,
                 read_s: float | None, max_bytes: int) -> None:
        self._resp, self._dog = resp, dog
        self.ends, self.read_s, self.max_bytes = ends, read_s, max_bytes
        self.status: int = resp.status
        self.headers: urllib3.HTTPHeaderDict = resp.headers
        self.size = 0  # body bytes read so far
        self.eof = False
        self._closed = False

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._dog.stop()
        if not self.eof:
            self._resp.close()  # the rest is unread: the connection cannot be reused
        self._resp.release_conn()

    def read1(self, amt: int = CHUNK) -> bytes:
        """At most ``amt`` bytes of the body (b"" at its end) from one socket read, which
        waits at most ``read_s`` and never past the deadline."""
        if self.eof:
            return b""
        if self.size == 0:
            declared = self.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise TooLarge(self.max_bytes)
        left_s = self._left_s()
        sock = getattr(self._resp.connection, "sock", None)
        if sock is not None:
            sock.settimeout(min(left_s, self.read_s) if self.read_s else left_s)
        try:
            chunk = self._resp.read1(amt)
        except urllib3.exceptions.ReadTimeoutError:
            raise _timed_out(self._dog, self.ends, self.read_s) from None
        except (urllib3.exceptions.HTTPError, OSError):
            if self._dog.fired or time.monotonic() >= self.ends:
                raise Overdue() from None
            raise
        if self._dog.fired:  # a shut socket reads as the end: not a whole answer
            raise Overdue()
        if not chunk:
            self.eof = True
            self._dog.stop()  # whole: the connection may serve the next answer
            return b""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(self.max_bytes)
        return chunk

    def read_all(self) -> bytes:
        """The rest of the body, whole."""
        return b"".join(iter(self.read1, b""))

    def _left_s(self) -> float:
        left_s = self.ends - time.monotonic()
        if left_s <= 0 or self._dog.fired:
            raise Overdue()
        return left_s


def _timed_out(dog: _Watchdog, ends: float, read_s: float | None) -> Overdue | SlowRead:
    """A socket read's timeout: the deadline's, or the per-read one's before it."""
    if dog.fired or time.monotonic() >= ends or read_s is None:
        return Overdue()
    return SlowRead(read_s)


class BoundedPool:
    """A urllib3 pool whose answers are bounded (no retries, no redirects followed)."""

    def __init__(self, pool_size: int, headers: Mapping[str, str] | None = None,
                 num_pools: int = 10) -> None:
        self._http = urllib3.PoolManager(num_pools=num_pools, maxsize=pool_size, retries=False,
                                         headers=dict(headers or {}))
        self._http.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def clear(self) -> None:
        self._http.clear()

    def open(self, method: str, url: str, headers: Mapping[str, str], *, ends: float,
             max_bytes: int, read_s: float | None = None, connect_s: float = 10.0,
             body: bytes | Iterator[bytes] | None = None) -> Answer:
        """Send a request; its answer's status line and headers, arrived by ``ends``
        (time.monotonic(): the whole answer's deadline), the body still to read. Each
        socket read waits at most ``read_s`` (SlowRead; None: until the deadline), a
        connection at most ``connect_s``; the body is at most ``max_bytes``."""
        left_s = ends - time.monotonic()
        if left_s <= 0:
            raise Overdue()
        dog = _Watchdog(ends)
        _asking.dog = dog
        try:
            resp = self._http.request(
                method, url, body=body, headers=dict(headers), redirect=False, retries=False,
                preload_content=False, timeout=urllib3.Timeout(
                    connect=min(left_s, connect_s),
                    read=min(left_s, read_s) if read_s else left_s))
        except urllib3.exceptions.ReadTimeoutError:
            dog.stop()
            raise _timed_out(dog, ends, read_s) from None
        except (urllib3.exceptions.HTTPError, OSError):
            dog.stop()
            if dog.fired or time.monotonic() >= ends:  # the watchdog cut it
                raise Overdue() from None
            raise
        except BaseException:
            dog.stop()
            raise
        finally:
            _asking.dog = None
        answer = Answer(resp, dog, ends, read_s, max_bytes)
        if dog.fired:
            answer.close()
            raise Overdue()
        return answer

    def request(self, method: str, url: str, headers: Mapping[str, str], *, ends: float,
                max_bytes: int, read_s: float | None = None, connect_s: float = 10.0,
                body: bytes | None = None) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """(status, headers, body) of an answer read whole under `open`'s bounds."""
        with self.open(method, url, headers, ends=ends, max_bytes=max_bytes, read_s=read_s,
                       connect_s=connect_s, body=body) as answer:
            return answer.status, answer.headers, answer.read_all()

    def get(self, url: str, headers: Mapping[str, str], ends: float, max_bytes: int
            ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """A GET whole by ``ends`` (every read may wait until then), at most ``max_bytes``."""
        return self.request("GET", url, headers, ends=ends, max_bytes=max_bytes)
