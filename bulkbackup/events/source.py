"""Where hour files come from: a path, stdin (`-`), or GH Archive's hours over HTTP
(events.url). Each is opened as a stream of decompressed lines: an hour is never held whole,
on disk or in memory (a 2 GB hour costs what one chunk and one line cost)."""

from __future__ import annotations

import contextlib
import io
import sys
import time
import typing
import zlib
from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO

import urllib3

from bulkbackup import __version__
from bulkbackup.config import EventsSettings
from bulkbackup.errors import BulkbackupError, UsageError, one_line
from bulkbackup.events import hours
from bulkbackup.http.bounded import BoundedPool, Overdue, SlowRead, TooLarge
from bulkbackup.http.tls import raise_if_untrusted

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16


class HourFailed(BulkbackupError):
    """An hour could not be read whole (truncated, not gzip, an HTTP error, too slow): it is
    not remembered as read (exit 1)."""


class _ChunkReader(io.RawIOBase):
    """A raw stream over an iterator of byte chunks (an HTTP body as it arrives)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: typing.Any) -> int:
        while not self._left:
            self._left = next(self._chunks, b"")
            if not self._left:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


class _Gunzip(io.RawIOBase):
    """The decompressed bytes of gzip members one after another, as gzip.GzipFile reads
    them, but under an io.BufferedReader whose readline runs in C (GzipFile's runs in Python
    for every line: a third of the time of an hour). At most the bytes asked for are
    inflated at once: a small chunk that inflates to gigabytes is read piece by piece. A
    member cut short is EOFError; a corrupt one (CRC, header) zlib.error."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._z = zlib.decompressobj(31)  # 31: a gzip header and trailer, checked
        self._pending = b""  # compressed bytes not given to the decompressor yet
        self._between = True  # no byte of the current member read yet

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: typing.Any) -> int:
        want = len(buffer)
        while True:
            out = b""
            if self._pending:
                self._between = False
                out = self._z.decompress(self._pending, want)
                self._pending = self._z.unconsumed_tail
            if out:
                buffer[: len(out)] = out
                return len(out)
            if self._z.eof:  # the next member, if any, starts in unused_data
                self._pending = self._z.unused_data
                self._z = zlib.decompressobj(31)
                self._between = True
                continue
            if not self._pending:
                self._pending = self._src.read(_CHUNK)
                if not self._pending:
                    if self._between:
                        return 0
                    raise EOFError("compressed file ended before the end-of-stream marker "
                                   "was reached")


def lines_of(raw: BinaryIO, need_gzip: bool, label: str) -> BinaryIO:
    """Decompressed lines of ``raw``: gzip by its magic bytes, else plain lines (a path or
    stdin only: an answer of events.url that is not gzip, e.g. an HTML error page, fails)."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(
        typing.cast(io.RawIOBase, raw), _CHUNK)
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return typing.cast(BinaryIO, io.BufferedReader(_Gunzip(typing.cast(BinaryIO, buffered)),
                                                       _CHUNK))
    if need_gzip:
        raise HourFailed(f"{label}: not gzip")
    return typing.cast(BinaryIO, buffered)


@contextlib.contextmanager
def open_path(path: str) -> Iterator[BinaryIO]:
    """The lines of the file ``path``, or of stdin for `-` (plain or gzip)."""
    if path == "-":
        yield lines_of(sys.stdin.buffer, False, "stdin")
        return
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror}") from None
    with raw:
        yield lines_of(typing.cast(BinaryIO, raw), False, path)


class HourFetcher:
    """GH Archive's hours from events.url: `<url>/<YYYY-MM-DD-H>.json.gz`, each read in a
    bounded time (events.hour_timeout_s) and size (events.max_hour_mb); 404: not published."""

    def __init__(self, settings: EventsSettings) -> None:
        self._settings = settings
        self._pool = BoundedPool(1, {"User-Agent": f"bulkbackup/{__version__}"})

    def url(self, hour: datetime) -> str:
        return f"{self._settings.url.rstrip('/')}/{hours.file_name(hour)}"

    @contextlib.contextmanager
    def open(self, hour: datetime) -> Iterator[BinaryIO | None]:
        """The hour's lines; None when it is not published (404). HourFailed for any other
        answer, and for a body cut short, too slow or too large (while it is read)."""
        label = hours.name(hour)
        ends = time.monotonic() + self._settings.hour_timeout_s
        max_bytes = self._settings.max_hour_mb << 20
        try:
            with self._pool.open("GET", self.url(hour), {}, ends=ends,
                                 max_bytes=max_bytes) as answer:
                if answer.status == 404:
                    yield None
                    return
                if answer.status != 200:
                    raise HourFailed(f"{label}: HTTP {answer.status}")
                body = iter(answer.read1, b"")
                yield lines_of(typing.cast(BinaryIO, _ChunkReader(body)), True, label)
        except (Overdue, SlowRead):
            raise HourFailed(f"{label}: not read whole within events.hour_timeout_s "
                             f"({self._settings.hour_timeout_s:g}s)") from None
        except TooLarge:
            raise HourFailed(f"{label}: larger than events.max_hour_mb "
                             f"({self._settings.max_hour_mb} MB)") from None
        except urllib3.exceptions.HTTPError as exc:
            raise_if_untrusted("events.url", exc)
            raise HourFailed(f"{label}: {one_line(exc, 200)}") from None

    def close(self) -> None:
        self._pool.clear()
