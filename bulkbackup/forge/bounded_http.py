"""HTTP GETs bounded in time and size, whatever the server does.

urllib3's read timeout applies to each socket read: a server that drips a byte at a time
holds a request forever, and a huge body is read whole. Here an answer (status line, headers
and body) arrives whole by its deadline and within its size, or the GET fails.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import urllib3
import urllib3.connection
import urllib3.response

_R = TypeVar("_R")
_CHUNK = 1 << 16  # bytes per read of a body


class Overdue(Exception):
    """The answer did not arrive whole by its deadline (to be treated as a timeout)."""


class TooLarge(Exception):
    """The answer is larger than allowed."""


# The time.monotonic() by which this thread's current answer must be whole (see get).
_answer_deadline = threading.local()


def _headers_by_deadline(sock: socket.socket | None, read: Callable[[], _R]) -> _R:
    """Run ``read`` (http.client reading the status line and headers, with a timeout per
    socket read only) under a watchdog that shuts the socket down at the answer's deadline."""
    ends: float | None = getattr(_answer_deadline, "at", None)
    if ends is None or sock is None:
        return read()
    watchdog = threading.Timer(max(ends - time.monotonic(), 0.0), _shut, (sock,))
    watchdog.daemon = True
    watchdog.start()
    try:
        return read()
    finally:
        watchdog.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _headers_by_deadline(self.sock, super().getresponse)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _headers_by_deadline(self.sock, super().getresponse)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class BoundedPool:
    """A urllib3 pool (no retries, no redirects followed) whose GETs are bounded."""

    def __init__(self, pool_size: int, headers: Mapping[str, str]) -> None:
        self._http = urllib3.PoolManager(maxsize=pool_size, retries=False, headers=dict(headers))
        self._http.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def clear(self) -> None:
        self._http.clear()

    def get(
        self, url: str, headers: Mapping[str, str], ends: float, max_bytes: int
    ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """(status, headers, body) of a GET that must be whole by ``ends`` (monotonic) and at
        most ``max_bytes`` long; Overdue, TooLarge, or urllib3's HTTPError otherwise."""
        resp = self._open(url, headers, ends)
        try:
            body = _read_body(resp, ends, max_bytes)
        except BaseException:
            resp.close()  # the rest of the answer is unread: the connection cannot be reused
            raise
        finally:
            resp.release_conn()
        return resp.status, resp.headers, body

    @contextlib.contextmanager
    def stream(
        self, url: str, headers: Mapping[str, str], ends: float, max_bytes: int
    ) -> Iterator[tuple[int, urllib3.HTTPHeaderDict, Iterator[bytes]]]:
        """As `get`, but the body comes as chunks, for answers too large to hold (an hour of
        GH Archive): each chunk by ``ends``, all of them within ``max_bytes`` (else Overdue,
        TooLarge). Leaving the block closes the connection unless the body was read whole."""
        resp = self._open(url, headers, ends)
        whole = False

        def chunks() -> Iterator[bytes]:
            nonlocal whole
            yield from _body_chunks(resp, ends, max_bytes)
            whole = True

        try:
            yield resp.status, resp.headers, chunks()
        finally:
            if not whole:
                resp.close()
            resp.release_conn()

    def _open(self, url: str, headers: Mapping[str, str], ends: float
              ) -> urllib3.BaseHTTPResponse:
        """The answer's status line and headers, by ``ends``; its body not read yet."""
        left_s = max(ends - time.monotonic(), 0.001)
        _answer_deadline.at = ends
        try:
            return self._http.request(
                "GET", url, headers=dict(headers), redirect=False, preload_content=False,
                timeout=urllib3.Timeout(connect=min(left_s, 10.0), read=left_s))
        except urllib3.exceptions.HTTPError:
            if time.monotonic() >= ends:  # the watchdog cut it, or the last read timed out
                raise Overdue() from None
            raise
        finally:
            _answer_deadline.at = None


def _read_body(resp: urllib3.BaseHTTPResponse, ends: float, max_bytes: int) -> bytes:
    return b"".join(_body_chunks(resp, ends, max_bytes))


def _body_chunks(resp: urllib3.BaseHTTPResponse, ends: float, max_bytes: int
                 ) -> Iterator[bytes]:
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge()
    size = 0
    while True:
        left_s = ends - time.monotonic()
        if left_s <= 0:
            raise Overdue()
        sock = getattr(resp.connection, "sock", None)
        if sock is not None:
            sock.settimeout(left_s)  # no single read may pass the answer's deadline
        try:
            chunk = resp.read1(_CHUNK)
        except urllib3.exceptions.ReadTimeoutError:
            raise Overdue() from None
        if not chunk:
            return
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge()
        yield chunk


def read_whole(resp: urllib3.BaseHTTPResponse, limit: int, deadline: float) -> bytes:
    """The whole body of a streamed answer, at most `limit` bytes (TooLarge), read by
    `deadline` (time.monotonic(); Overdue). An aborted read closes the connection."""
    chunks, total = [], 0
    try:
        for chunk in resp.stream(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise TooLarge
            if time.monotonic() > deadline:
                raise Overdue("the answer took too long")
            chunks.append(chunk)
    except BaseException:
        resp.close()
        raise
    resp.release_conn()
    return b"".join(chunks)
