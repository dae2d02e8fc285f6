"""S3 downloads read on the event loop: a GET of the object, signed by the store's boto3 client
(locally: signing sends nothing), sent and read here over asyncio, its answer parsed by
httptools (uvicorn's C parser, already serve's dependency).

Why: read in the threadpool, botocore's body came 64 KiB per thread hand-off, one piece at a
time, with a CRC32 check of every byte: serve streamed S3 objects at 0.24-0.35x of nginx's
proxy_pass (docs/benchmarks.md). Here the socket is read on the loop as bytes arrive, ahead
of the client by one piece plus the kernel's socket buffer, with no hand-off per piece.

Why not aiohttp (measured, docs/benchmarks.md): it was as fast, but its protocol takes
whatever one socket read brings (up to 256 KiB under uvloop) before it can pause, so 200
stalled clients held twice what tests/test_serve_hostile.py allows. This protocol is
buffered: the transport reads into one shared buffer (READ_AHEAD_BYTES while the client
waits for bytes, READ_BYTES while it is behind), parsed PIECE_BYTES at a time, and reading
pauses as soon as PIECE_BYTES of body wait for the client.

Bounds: connecting CONNECT_S, the answer's headers HEADERS_S (at most HEADER_BYTES of
them), each wait for body bytes READ_S (one watchdog timer a connection; the store's boto3
client has 10 s and 120 s); at most the asked range is read (the caller's range ends within
the object's size); a stalled client holds at most READ_AHEAD_BYTES here (less than
PIECE_BYTES waiting plus a READ_BYTES read, or one read ahead while it waited), one piece of
which uvicorn may take into its buffer. One connection per download (closed at its end): a
download is megabytes, a connection's setup a round trip.

The signed URL is a credential until it expires: it is never logged, shown or put in an
error; messages are built here, naming the key only.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import threading
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

import botocore.httpsession
import botocore.session
import httptools

from bulkbackup.errors import NotFound, StoreError

CONNECT_S = 10.0
HEADERS_S = 120.0
READ_S = 120.0
# One read of the socket at most: READ_AHEAD_BYTES while the reader waits for bytes, else
# READ_BYTES; either is parsed PIECE_BYTES at a time, so pieces stay PIECE_BYTES. Twice the
# bytes a read is half the reads and their system calls: less of serve's CPU per GB
# (docs/benchmarks.md). Pieces of a whole read doubled what 200 stalled clients hold
# (+105 MiB, tests/test_serve_hostile.py): a client that stalls holds a piece in uvicorn's
# buffer and one here, as with READ_BYTES reads.
READ_AHEAD_BYTES = 128 * 1024
READ_BYTES = 64 * 1024
PIECE_BYTES = 64 * 1024  # body bytes waiting for the client before reading pauses
HEADER_BYTES = 64 * 1024
# Attempts of the GET before any byte went to the client (boto3's standard mode retries
# the same failures: no connection, a timeout, a 5xx or a throttle).
ATTEMPTS = 3
RETRY_BASE_S = 0.2
_RETRIED_STATUS = {429, 500, 502, 503, 504}
# A strong entity tag as S3 sends it (RFC 9110 8.8.3): the only thing put in If-Match.
_ENTITY_TAG = re.compile(r'"[\x21\x23-\x7e]*"')


class _Failed(Exception):
    """The GET failed; the message names no URL."""


class _Buffers(threading.local):
    """The read buffer of this thread's event loop: the transport fills it and hands it to
    buffer_updated at once (the same call of the loop), so one serves every connection."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_AHEAD_BYTES))
        self.behind = self.view[:READ_BYTES]


_BUFFERS = _Buffers()


class _Answer(asyncio.BufferedProtocol):
    """One GET's connection: its answer parsed as it arrives; body bytes queue up to
    PIECE_BYTES, then reading pauses until the client takes them."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self._header_bytes = 0
        self._headers_done = False
        self._pieces: deque[bytes] = deque()
        self._held = 0
        self._paused = False
        self._ended = False  # the whole answer came, or the connection ended
        self._error: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        # The bound of a wait for body bytes: one timer a connection, armed again only when
        # it fires (a timeout a wait cost a download a few per cent of serve's CPU).
        self._time = asyncio.get_running_loop().time
        self._progress_at = 0.0  # when body bytes last came, or the reader began to wait
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio's side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A uvloop transport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUFFERS.view if self._waiter is not None else _BUFFERS.behind

    def buffer_updated(self, nbytes: int) -> None:
        if self._ended:
            return
        try:
            for start in range(0, nbytes, PIECE_BYTES):
                if self._ended:  # the answer's end came in an earlier piece
                    return
                self._parser.feed_data(_BUFFERS.view[start:min(start + PIECE_BYTES, nbytes)])
        except (httptools.HttpParserError, _Failed) as exc:
            # httptools wraps a callback's exception (on_header's _Failed) in its own.
            cause = exc if isinstance(exc, _Failed) else exc.__cause__ or exc.__context__
            self._end(f"a bad answer ({cause})" if isinstance(cause, _Failed) else "a bad answer")

    def eof_received(self) -> bool:
        self._end("the connection closed early")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("the connection was lost")

    # -- httptools' side ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEADER_BYTES:
            raise _Failed("headers too long")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._progress_at = self._time()
        self._pieces.append(body)
        self._held += len(body)
        if self._held >= PIECE_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._end(None)

    # -- the reader's side -------------------------------------------------------------------

    def _end(self, error: str | None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_headers(self) -> None:
        while not self._headers_done:
            if self._ended:
                raise _Failed(self._error or "no answer")
            await self._wait()

    async def piece(self) -> bytes:
        """The next body bytes; b"" at the answer's end; _Failed when it ended early."""
        while not self._pieces:
            if self._ended:
                if self._error is not None:
                    raise _Failed(self._error)
                return b""
            self._progress_at = self._time()
            if self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().call_at(
                    self._progress_at + READ_S, self._watch)
            await self._wait()
        data = self._pieces.popleft()
        self._held -= len(data)
        if self._paused and self._held < PIECE_BYTES and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def _watch(self) -> None:
        """Ends the answer when the reader has waited READ_S for body bytes."""
        self._watchdog = None
        if self._ended or self._waiter is None:
            return  # not waiting: the next wait arms it again
        due = self._progress_at + READ_S
        if self._time() >= due:
            self._end("timed out")
        else:
            self._watchdog = asyncio.get_running_loop().call_at(due, self._watch)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.close()
        self._ended = True


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Certificates as boto3 checks them: AWS_CA_BUNDLE / the profile's ca_bundle, else
    botocore's default bundle."""
    bundle = botocore.session.Session().get_config_variable("ca_bundle")
    return ssl.create_default_context(cafile=bundle or botocore.httpsession.get_cert_path(True))


def proxied(url: str) -> bool:
    """Whether a proxy (HTTP(S)_PROXY, not bypassed by NO_PROXY) applies to ``url``: boto3
    uses it, and this client does not speak to proxies (the caller reads through boto3)."""
    parts = urllib.parse.urlsplit(url)
    if not urllib.request.getproxies().get(parts.scheme):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


async def _get(url: str, start: int, end: int, version: str) -> _Answer:
    """Connect, send the GET of bytes ``start``-``end`` (inclusive) of the object's
    ``version`` (its ETag: another is refused with 412) and read the headers."""
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_S):
        transport, answer = await loop.create_connection(
            _Answer, host, port, ssl=_ssl_context() if tls else None,
            server_hostname=host if tls else None)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        pin = f"If-Match: {version}\r\n" if _ENTITY_TAG.fullmatch(version) else ""
        # The Host as signed: the URL's own (botocore signs the netloc it built).
        transport.write((f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                         f"Range: bytes={start}-{end}\r\n{pin}Accept-Encoding: identity\r\n"
                         "User-Agent: bulkbackup-serve\r\nConnection: close\r\n\r\n"
                         ).encode("latin-1"))
        async with asyncio.timeout(HEADERS_S):
            await answer.read_headers()
    except BaseException:
        answer.close()
        raise
    return answer


@dataclass
class Fetch:
    """``length`` (> 0) bytes of ``key`` from ``start``, read through its signed ``url``;
    of the object's ``version`` (Head.version, its ETag) when given: an object rewritten
    since it was described is refused, never sent under the older one's size and tags."""

    url: str = field(repr=False)
    key: str
    start: int
    length: int
    version: str = ""
    _answer: _Answer | None = field(default=None, repr=False)
    _empty: bool = False

    async def open(self) -> None:
        """Send the GET and read its headers (retrying what may pass): NotFound when the
        object is gone, StoreError when the store fails; nothing is sent to the client yet."""
        for attempt in range(ATTEMPTS):
            retry = attempt + 1 < ATTEMPTS
            try:
                answer = await _get(self.url, self.start, self.start + self.length - 1,
                                    self.version)
            except (_Failed, TimeoutError, OSError) as exc:
                if not retry:
                    raise StoreError(f"cannot read {self.key!r}: {_reason(exc)}") from None
            else:
                if self._accept(answer):
                    return
                if not retry or answer.status not in _RETRIED_STATUS:
                    raise StoreError(f"cannot read {self.key!r}: HTTP {answer.status}")
            await asyncio.sleep(RETRY_BASE_S * 2 ** attempt * random.uniform(0.5, 1.5))

    def _accept(self, answer: _Answer) -> bool:
        """Whether ``answer`` is the body to send (kept), else it is closed: a 404 is
        NotFound, a 416 an object that shrank (an empty body: the client sees a short one,
        as when it shrinks while read)."""
        status = answer.status
        ranged = answer.headers.get("content-range", "").startswith(f"bytes {self.start}-")
        if (status == 206 and ranged) or (status == 200 and self.start == 0):
            self._answer = answer
            return True
        answer.close()
        if status == 404:
            raise NotFound(f"no such object: {self.key!r}")
        if status == 412:
            raise StoreError(f"cannot read {self.key!r}: it changed since it was described")
        if status == 416:
            self._empty = True
            return True
        if status in (200, 206):  # not the range asked for: never splice other bytes
            raise StoreError(f"cannot read {self.key!r}: the store answered another range")
        return False

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        """The body (after open()), at most ``length`` bytes; a failure ends it early (the
        client sees a short body) and is raised as StoreError."""
        answer = self._answer
        if answer is None:
            return
        left = self.length
        try:
            while left > 0:
                try:
                    data = await answer.piece()
                except (_Failed, TimeoutError) as exc:
                    raise StoreError(f"cannot read {self.key!r}: {_reason(exc)}") from None
                if not data:
                    return  # the object changed under us: the client sees a short body
                if len(data) > left:
                    data = data[:left]
                left -= len(data)
                yield data
        finally:
            self.close()

    def close(self) -> None:
        if self._answer is not None:
            self._answer.close()
            self._answer = None


def _reason(exc: BaseException) -> str:
    """Why a GET failed, in words that carry no URL."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, _Failed):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
