"""Archive downloads streamed from the store: HEAD, ETag/Last-Modified, single-range Range.

The data never sits whole in memory: it is read in CHUNK_BYTES pieces and written as the
client takes it. An S3 store's object is fetched on the event loop (s3_stream.py: a GET
signed by the store's client, read with aiohttp; its errors before the first byte are clean
404/503 answers); a local store's file is read in place, on the event loop when the piece is
in the page cache (preadv with RWF_NOWAIT: no thread hand-off per piece, which cost most of a
download's time) and in the threadpool when it is not (a disk read never blocks the loop);
another store's stream is read in the threadpool. uvicorn waits for a slow client's socket to
drain before it writes the next piece (not after), so a stalled client holds about two pieces
plus the transport's 64 KiB high-water mark: the pieces are small so that hundreds of stalled
clients hold little (measured in tests/test_serve_hostile.py). A body that ends short (the
object changed, the store failed) is cut: the connection closes before Content-Length bytes,
never with a complete-looking answer.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from bulkbackup.archive import layout
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.store import Head, Store
from bulkbackup.store.base import content_type
from bulkbackup.store.local_listing import file_version
from bulkbackup.web.http import Unavailable

if TYPE_CHECKING:  # imported when an S3 store is served (aiohttp: not for a local store)
    from bulkbackup.web.s3_stream import Fetch

log = logging.getLogger(__name__)
CHUNK_BYTES = 64 * 1024
PRESIGN_S = 300
# How long the GET that serve signs for itself stays valid (S3 checks it when the request
# arrives, not while the body flows).
SIGNED_GET_S = 300
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
DIGITS_MAX = 19  # 10**19 bytes is past any object
# What can be downloaded (its Content-Type comes from the key: store.base.content_type).
KINDS = ("bundle", "zip")
# Read a page-cached piece without blocking (Linux >= 4.14); elsewhere every piece is read in
# the threadpool.
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


@runtime_checkable
class SignsGets(Protocol):
    """A store whose objects serve fetches itself by a signed GET (store/s3.py)."""

    def signed_get(self, key: str, expires_s: int) -> str: ...


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    """The Range asks for bytes the object does not have (416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks for; None for the whole object (no header, a header
    this server does not serve such as several ranges, which RFC 9110 lets it ignore).

    Numbers longer than DIGITS_MAX are not parsed (they are past any object): a last
    position or a suffix length that long means "to the end" / "all of it" (RFC 9110 14.1.1
    clamps both), a first position that long is past the end (416)."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = size if len(last) > DIGITS_MAX else int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(size - n, 0), size - 1)
    if len(first) > DIGITS_MAX:
        raise Unsatisfiable
    start = int(first)
    end = size - 1 if not last or len(last) > DIGITS_MAX else min(int(last), size - 1)
    if start >= size or (last and len(last) <= DIGITS_MAX and int(last) < start):
        raise Unsatisfiable
    return ByteRange(start, end)


def etag(head: Head) -> str:
    return f'"{head.size:x}-{int(head.last_modified.timestamp() * 1e6):x}"'


def _not_modified(request: Request, tag: str, head: Head) -> bool:
    match = request.headers.get("if-none-match")
    if match is not None:
        return match.strip() == "*" or tag in [t.strip() for t in match.split(",")]
    since = request.headers.get("if-modified-since")
    if since:
        try:
            return head.last_modified.replace(microsecond=0) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False


def _range_applies(request: Request, tag: str, head: Head) -> bool:
    """If-Range: a range of a changed object must not be spliced onto an older one."""
    cond = request.headers.get("if-range")
    if cond is None:
        return True
    cond = cond.strip()
    if cond.startswith('"') or cond.startswith("W/"):
        return cond == tag
    try:
        return head.last_modified.replace(microsecond=0) <= parsedate_to_datetime(cond)
    except (TypeError, ValueError):
        return False


def _chunks(store: Store, key: str, start: int, length: int
            ) -> Generator[bytes, None, None]:
    with store.open(key, start, start + length if length else None) as f:
        left = length
        # read1: one read of the underlying stream, never a fill of a (1 MiB) read-ahead
        # buffer that a stalled client would hold.
        read = getattr(f, "read1", f.read)
        while left > 0:
            data = read(min(CHUNK_BYTES, left))
            if not data:
                return  # the object changed under us: the client sees a short body
            left -= len(data)
            yield data


def _cached_piece(fd: int, size: int, offset: int) -> memoryview | None:
    """Up to ``size`` bytes at ``offset`` if the page cache has (the first of) them, without
    blocking; None when they must come from the disk."""
    assert _NOWAIT is not None
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, _NOWAIT)
    except BlockingIOError:
        return None
    return memoryview(buf)[:got]


async def _in_place(store: Store, key: str, start: int, length: int, version: str
                    ) -> AsyncGenerator[bytes | memoryview, None]:
    """The local store's file read where it lies (positional reads of the file open whole):
    the file of ``version`` (Head.version); one rewritten since is not read (the client
    sees a short body, never another version's bytes under this one's size and tags)."""
    f = await run_in_threadpool(store.open, key)
    try:
        fd, offset, left, nowait = f.fileno(), start, length, _NOWAIT is not None
        if version and file_version(os.fstat(fd)) != version:
            log.warning("store: %r changed since it was described (download cut)", key)
            return
        while left > 0:
            size = min(CHUNK_BYTES, left)
            data: bytes | memoryview | None = None
            if nowait:
                try:
                    data = _cached_piece(fd, size, offset)
                except OSError as exc:  # a file system without RWF_NOWAIT reads
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    nowait = False
            if data is None:
                data = await run_in_threadpool(os.pread, fd, size, offset)
            if not data:
                return  # the object changed under us: the client sees a short body
            offset += len(data)
            left -= len(data)
            yield data
    finally:
        f.close()  # closing a file does not block (no thread can be reading it now)


class Download(StreamingResponse):
    """A streamed body whose reader (open file, store connection, buffers) is closed as soon
    as the response ends, even when the client went away: left to the garbage collector, an
    abandoned one stays open until a collection runs, which an idle server never does."""

    def __init__(self, chunks: Generator[bytes, None, None]
                 | AsyncGenerator[bytes | memoryview, None], ended: Callable[[], None],
                 status_code: int, headers: dict[str, str], media_type: str) -> None:
        super().__init__(chunks, status_code=status_code, headers=headers,
                         media_type=media_type)
        self._chunks = chunks
        self._ended = ended
        self._length = int(headers["Content-Length"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # No thread is inside the generator now (the threadpool call is waited for even
            # when cancelled), and closing a file or a store connection does not block.
            if isinstance(self._chunks, Generator):
                self._chunks.close()
            else:
                await self._chunks.aclose()
            self._ended()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        left = self._length
        try:
            async for chunk in self.body_iterator:
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except StoreError as exc:  # the answer has started: it can only be cut
            log.warning("store: %s (download cut)", exc)
        if left:
            # Short: not completing the response makes uvicorn close the connection, so the
            # client sees a truncated body (completing it would be uvicorn's RuntimeError).
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class S3Download(Download):
    """A download whose GET is sent, and its headers read, before the answer starts: a store
    that fails or lost the object gets a clean 503 / 404, not a cut body."""

    def __init__(self, fetch: Fetch, ended: Callable[[], None], status_code: int,
                 headers: dict[str, str], media_type: str) -> None:
        super().__init__(fetch.pieces(), ended, status_code, headers, media_type)
        self._fetch = fetch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._fetch.open()
        except NotFound:
            self._ended()
            raise HTTPException(404) from None
        except StoreError as exc:
            self._ended()
            log.warning("store: %s", exc)
            raise Unavailable("store") from None
        except BaseException:
            self._fetch.close()
            self._ended()
            raise
        await super().__call__(scope, receive, send)


def respond(request: Request, store: Store, key: str, kind: str, head: Head,
            redirect: bool, ended: Callable[[], None] = lambda: None) -> Response:
    """The download response for ``key`` (already known to exist with data); ``ended`` is
    called when its body has been sent or abandoned."""
    name = layout.file_name(key)
    tag = etag(head)
    headers = {
        "Content-Disposition": f'{"inline" if kind == "json" else "attachment"}; '
                               f'filename="{name}"',
        "Accept-Ranges": "bytes",
        "ETag": tag,
        "Last-Modified": format_datetime(head.last_modified, usegmt=True),
        "Cache-Control": "public, max-age=60",
    }
    if redirect:
        url = store.presigned_url(key, PRESIGN_S, name)  # saved as the streamed one is
        if url is not None:
            return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    if _not_modified(request, tag, head):
        return Response(status_code=304, headers=headers)
    try:
        wanted = parse_range(request.headers.get("range"), head.size)
    except Unsatisfiable:
        return Response(status_code=416, headers={**headers,
                                                  "Content-Range": f"bytes */{head.size}"})
    if wanted is not None and not _range_applies(request, tag, head):
        wanted = None
    status, start, length = 200, 0, head.size
    if wanted is not None:
        status, start, length = 206, wanted.start, wanted.length
        headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{head.size}"
    headers["Content-Length"] = str(length)
    media = content_type(key)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media)
    if isinstance(store, SignsGets):
        from bulkbackup.web import s3_stream

        url = store.signed_get(key, SIGNED_GET_S)
        if not s3_stream.proxied(url):  # through a proxy: boto3's read below
            return S3Download(s3_stream.Fetch(url, key, start, length, head.version), ended,
                              status, headers, media)
    chunks = _in_place(store, key, start, length, head.version) \
        if store.local_path(key) is not None \
        else _chunks(store, key, start, length)
    return Download(chunks, ended, status_code=status, headers=headers, media_type=media)


def respond_json(request: Request, store: Store, login: str, head: Head) -> Response:
    """The user's stored object (the repository list), as stored."""
    return respond(request, store, login, "json", head, redirect=False)
