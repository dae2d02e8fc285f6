"""`bulkbackup ingest`: stream a users dump into `tracked` at Redis speed.

The dump may hold hundreds of millions of lines, so memory is constant: lines are parsed one
at a time and sent as large `ZADD tracked NX` commands (RESP packed here, one pass, no
per-argument encoding), and while Redis applies batch k the next batch is being parsed.
Duplicate logins in the dump are not detected (that would need memory that grows with the
dump); each occurrence counts as accepted and the repeat shows up as "already tracked".
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

import orjson
import redis

from bulkbackup import keys
from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError, UsageError
from bulkbackup.names import is_login
from bulkbackup.progress import Progress

GZIP_MAGIC = b"\x1f\x8b"
_REJECTS_SHOWN = 5
_HEAD = b"$4\r\nZADD\r\n$%d\r\n%s\r\n$2\r\nNX\r\n" % (len(keys.TRACKED), keys.TRACKED.encode())
_PREFIX_LEN = len(keys.MEMBER_PREFIX)


@dataclass
class IngestResult:
    lines: int = 0
    accepted: int = 0
    new: int = 0
    rejected: int = 0
    elapsed_s: float = 0.0
    first_rejects: list[tuple[int, str]] = field(default_factory=list)

    @property
    def existing(self) -> int:
        return self.accepted - self.new

    def summary(self) -> str:
        rate = self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"ingest: {self.lines} lines read, {self.accepted} logins accepted, "
            f"{self.new} newly tracked, {self.existing} already tracked, "
            f"{self.rejected} rejected, {self.elapsed_s:.1f}s, {rate:,.0f} users/s"
        )
        if self.first_rejects:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.first_rejects)
            more = ", ..." if self.rejected > len(self.first_rejects) else ""
            text += f" (rejected {shown}{more})"
        return text


def open_dump(path: str) -> tuple[BinaryIO, int | None, BinaryIO]:
    """(line stream, size in bytes if known, raw stream whose position measures progress).

    Gzip is detected by its magic bytes, never by the file name.
    """
    if path == "-":
        raw: BinaryIO = sys.stdin.buffer
        size = None
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the caller via the returned stream
        except OSError as exc:
            raise UsageError(f"cannot open dump {path}: {exc.strerror}") from None
        size = os.fstat(raw.fileno()).st_size if Path(path).is_file() else None
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(
        typing.cast(io.RawIOBase, raw))
    stream = typing.cast(BinaryIO, buffered)
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return typing.cast(BinaryIO, gzip.GzipFile(fileobj=buffered, mode="rb")), size, stream
    return stream, size, stream


def extract_login(obj: object) -> object:
    """The login of one dump line: `login`, GH Archive's `actor_login` or `actor.login`."""
    if not isinstance(obj, dict):
        return None
    login = obj.get("login")
    if login is None:
        login = obj.get("actor_login")
    if login is None:
        actor = obj.get("actor")
        if isinstance(actor, dict):
            login = actor.get("login")
    return login


def parse_lines(
    lines: Iterator[bytes], result: IngestResult, rejects: TextIO | None
) -> Iterator[str]:
    """Valid logins, in order; every other line is counted (and written to ``rejects``)."""
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    for raw in lines:
        result.lines += 1
        try:
            login = extract_login(loads(raw))
        except decode_error:
            why = "blank line" if not raw.strip() else "invalid JSON"
        else:
            if is_login(login):
                yield login  # type: ignore[misc]
                continue
            why = "no login" if login is None else "invalid login"
        result.rejected += 1
        if len(result.first_rejects) < _REJECTS_SHOWN:
            result.first_rejects.append((result.lines, why))
        if rejects is not None:
            text = raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
            rejects.write(f"{result.lines}\t{why}\t{text}\n")


def _pack(logins: list[str]) -> bytes:
    """One RESP `ZADD tracked NX -inf github.com/<login> ...` command."""
    body = "".join(
        [f"$4\r\n-inf\r\n${len(x) + _PREFIX_LEN}\r\n{keys.MEMBER_PREFIX}{x}\r\n" for x in logins]
    )
    return b"*%d\r\n" % (3 + 2 * len(logins)) + _HEAD + body.encode("ascii")


def ingest(
    settings: Settings,
    path: str,
    limit: int | None = None,
    batch_size: int | None = None,
    rejects_path: str | None = None,
    progress: bool = True,
) -> IngestResult:
    batch = batch_size or settings.ingest.batch_size
    depth = settings.ingest.pipeline_depth
    if batch < 1:
        raise UsageError("--batch-size must be positive")
    if limit is not None and limit < 0:
        raise UsageError("--limit must not be negative")
    result = IngestResult()
    started = time.perf_counter()
    stream, size, raw = open_dump(path)
    rejects = open(rejects_path, "w", encoding="utf-8") if rejects_path else None  # noqa: SIM115
    pool = redis.ConnectionPool.from_url(settings.redis.url)
    conn = pool.get_connection()
    bar = Progress(total=size, unit="B", desc="ingest", enabled=progress, unit_scale=True)
    try:
        conn.connect()
        unread = 0  # ZADD commands sent whose replies are not read yet

        def send(batch_logins: list[str]) -> None:
            nonlocal unread
            conn.send_packed_command([_pack(batch_logins)], check_health=False)
            result.accepted += len(batch_logins)
            unread += 1

        def read_reply() -> None:
            nonlocal unread
            # An error reply raises redis.ResponseError, which the CLI reports in one line.
            result.new += int(conn.read_response())
            unread -= 1

        logins: list[str] = []
        lines = iter(stream) if limit != 0 else iter(())
        for login in parse_lines(lines, result, rejects):
            logins.append(login)
            if limit is not None and result.accepted + len(logins) >= limit:
                break
            if len(logins) >= batch:
                # Send now, read the reply later: Redis applies this batch while the next
                # one is parsed.
                send(logins)
                logins = []
                if unread > depth:
                    read_reply()
                bar.set_position(raw.tell() if size is not None else None)
        if logins:
            send(logins)
        while unread:
            read_reply()
        bar.set_position(size)
    except redis.ConnectionError as exc:
        raise BulkbackupError(f"redis: {exc}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BulkbackupError(f"cannot read dump {path}: {exc}") from None
    finally:
        bar.close()
        if rejects is not None:
            rejects.close()
        pool.release(conn)
        pool.disconnect()
        if stream is not sys.stdin.buffer:
            stream.close()
    result.elapsed_s = time.perf_counter() - started
    return result
