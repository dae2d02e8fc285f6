"""`bulkbackup ingest`: stream a users dump into `tracked` at Redis speed.

The dump may hold hundreds of millions of lines, so memory is constant: lines are parsed one
at a time and sent in large batches to track.lua (`ZADD tracked NX`, one account one member:
logins ignore case; RESP packed here, one pass, no per-argument encoding), and while Redis
applies batch k the next batch is being parsed. The dump's spelling is trusted.
Duplicate logins in the dump are not detected (that would need memory that grows with the
dump); each occurrence counts as accepted and the repeat shows up as "already tracked".
A line longer than MAX_LINE_BYTES is rejected without ever being held whole.
"""

from __future__ import annotations

import functools
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

from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError, UsageError
from bulkbackup.iterutil import chunks
from bulkbackup.names import is_login
from bulkbackup.progress import Progress
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts, connect
from bulkbackup.queue.tracked import TRACK_BATCH

GZIP_MAGIC = b"\x1f\x8b"
# A users dump line is ~50 bytes, a GH Archive event a few KB: anything longer is not a user.
MAX_LINE_BYTES = 64 * 1024
TOO_LONG = "line too long"
_REJECTS_SHOWN = 5

def _bulk(text: str) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text.encode("ascii"))


# The arguments of _head's command before the logins.
HEAD_ARGS = 8


def _head(sha: str) -> bytes:
    """`EVALSHA <track.lua> 3 tracked bulkbackup:logins bulkbackup:search github.com/ count`,
    RESP-encoded."""
    return b"".join(_bulk(x) for x in ("EVALSHA", sha, "3", keys.TRACKED, keys.LOGINS,
                                       keys.SEARCH, keys.MEMBER_PREFIX, "count"))


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


def _skip_rest(readline: typing.Callable[[int], bytes], max_bytes: int) -> None:
    """Read the rest of an over-long line in bounded pieces, keeping none of it."""
    while (rest := readline(max_bytes)) and not rest.endswith(b"\n"):
        pass


def parse_lines(
    stream: BinaryIO, result: IngestResult, rejects: TextIO | None,
    max_bytes: int = MAX_LINE_BYTES,
) -> Iterator[str]:
    """Valid logins, in order; every other line is counted (and written to ``rejects``).

    Lines are read at most ``max_bytes`` at a time: a longer one is rejected as "line too
    long" without ever being held whole, so memory stays constant whatever the dump holds.
    """
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    readline = stream.readline
    for raw in iter(functools.partial(readline, max_bytes + 1), b""):
        result.lines += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            _skip_rest(readline, max_bytes)
            why, raw = TOO_LONG, b""
        else:
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


def _pack(head: bytes, logins: list[str]) -> bytes:
    """One RESP `EVALSHA <track.lua> ... <login> ...` command (``head``: see _head)."""
    body = "".join([f"${len(x)}\r\n{x}\r\n" for x in logins])
    return b"*%d\r\n" % (HEAD_ARGS + len(logins)) + head + body.encode("ascii")


class _Sender:
    """Commands written ahead of their replies: Redis applies batch k while batch k+1
    is parsed. At most ``depth`` replies are left unread."""

    def __init__(self, conn: redis.connection.AbstractConnection, result: IngestResult,
                 depth: int, head: bytes) -> None:
        self.conn = conn
        self.head = head
        self.result = result
        self.depth = depth
        self.unread = 0

    def send(self, logins: list[str]) -> None:
        for part in chunks(logins, TRACK_BATCH):
            self.conn.send_packed_command([_pack(self.head, part)], check_health=False)
            self.unread += 1
        self.result.accepted += len(logins)
        while self.unread > self.depth:
            self.read_reply()

    def read_reply(self) -> None:
        # An error reply raises redis.ResponseError, which the CLI reports in one line.
        # track.lua ("count") answers how many logins of the batch it added.
        self.result.new += int(self.conn.read_response())
        self.unread -= 1

    def drain(self) -> None:
        while self.unread:
            self.read_reply()


def _feed(logins: Iterator[str], sender: _Sender, batch: int, limit: int | None,
          on_batch: typing.Callable[[], None]) -> None:
    """Send ``logins`` in batches of ``batch``, stopping after ``limit`` accepted."""
    pending: list[str] = []
    for login in logins:
        pending.append(login)
        if limit is not None and sender.result.accepted + len(pending) >= limit:
            break
        if len(pending) >= batch:
            sender.send(pending)
            pending = []
            on_batch()
    if pending:
        sender.send(pending)
    sender.drain()


def ingest(
    settings: Settings,
    path: str,
    limit: int | None = None,
    batch_size: int | None = None,
    rejects_path: str | None = None,
    progress: bool = True,
) -> IngestResult:
    batch = batch_size or settings.ingest.batch_size
    if batch < 1:
        raise UsageError("--batch-size must be positive")
    if limit is not None and limit < 0:
        raise UsageError("--limit must not be negative")
    result = IngestResult()
    started = time.perf_counter()
    client = connect(settings.redis, decode=False)  # ConfigError: a bad URL
    pool = client.connection_pool
    stream, size, raw = open_dump(path)
    rejects = open(rejects_path, "w", encoding="utf-8") if rejects_path else None  # noqa: SIM115
    conn = pool.get_connection()
    bar = Progress(total=size, unit="B", desc="ingest", enabled=progress, unit_scale=True)
    try:
        conn.connect()
        script = Scripts(client).track
        client.script_load(script.script)  # EVALSHA below: loaded before the first batch
        lines = stream if limit != 0 else typing.cast(BinaryIO, io.BytesIO())
        _feed(parse_lines(lines, result, rejects), _Sender(conn, result,
              settings.ingest.pipeline_depth, _head(script.sha)), batch, limit,
              lambda: bar.set_position(raw.tell() if size is not None else None))
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
