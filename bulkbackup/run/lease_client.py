"""The client of `serve`'s lease API (docs/serve.md "Lease API"): what a remote worker
(`run --server`, phase 2) uses in place of Redis and the store. Every request is bounded
(http/bounded.py: a deadline for the whole answer, a byte cap); answers are typed:

- 401 (unknown or revoked token): WorkerTokenRefused, a ConfigError: the worker stops;
- a TLS certificate that does not verify: ServerUntrusted, a ConfigError too (no retry);
- 403/409 (not this token's lease, or lost meanwhile): LockLost, as a local worker's lock;
- 429, 5xx, a refused or cut connection, a timeout: retried with doubling backoff (at most
  ``retries`` times, Retry-After honoured up to the backoff's cap), then ServerUnavailable;
- any other answer: ServerRefused (a request this client should not have made).
"""

from __future__ import annotations

import enum
import io
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

import orjson
import urllib3

from bulkbackup.errors import BulkbackupError, ConfigError, LockLost
from bulkbackup.http.bounded import Answer, BoundedPool, Overdue, SlowRead
from bulkbackup.http.tls import certificate_failure, untrusted_message
from bulkbackup.store.base import Head, clean_metadata
from bulkbackup.store.listing import ObjectInfo

METADATA_HEADER = "X-Bulkbackup-Metadata"
JSON_MAX_BYTES = 64 << 20  # a listing of a user with very many parts
UPLOAD_CHUNK = 1 << 20
STREAM_MAX_BYTES = 1 << 50  # a streamed read: bounded by its range and deadline instead
BACKOFF_MAX_S = 60.0
OFFER_URL_MAX_CHARS = 8192


class WorkerTokenRefused(ConfigError):
    """The server does not know the worker token (wrong, or revoked): stop."""


class ServerUntrusted(ConfigError):
    """The server's TLS certificate did not verify (its CA not trusted, a name that is not
    the URL's host, expired): a setup to fix, which no retry mends."""


class ServerUnavailable(BulkbackupError):
    """The server did not answer usefully within the retries."""


class ServerRefused(BulkbackupError):
    """The server refused the request (4xx other than 401/403/409)."""


class Outcome(enum.Enum):
    """What a completion did (queue/tracked.Completion, as the server reports it)."""

    DONE = "done"
    DEFERRED = "deferred"


@dataclass(frozen=True)
class Lease:
    lease_id: str  # the lock's worker id: `<rand>.<token name>.remote`
    users: list[str]
    remaining: int
    lock_ttl_s: int
    server_time: float
    # Users held by anyone that were due in the run: given when no user was leased (an idle
    # worker's poll then needs no status request to know whether the run is over).
    in_flight: int | None = None


@dataclass(frozen=True)
class Status:
    remaining: int  # users still due in the run
    in_flight: int  # users held by anyone that were due in it
    lock_ttl_s: int
    server_time: float


@dataclass(frozen=True)
class UserState:
    """A leased user's object (its head) and the shallow listing of its archives (None:
    too many to send at once)."""

    user: Head | None
    objects: list[ObjectInfo] | None


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    # A file is streamed: a path is opened at each attempt, an open file read from its start.
    body: bytes | Path | BinaryIO | None = None
    headers: Mapping[str, str] | None = None
    timeout_s: float | None = None
    max_bytes: int = JSON_MAX_BYTES


def _q(text: str) -> str:
    return quote(text, safe="/")


class LeaseClient:
    """One client per worker process (its pool is not shared across processes)."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0,
                 upload_timeout_s: float = 3600.0, retries: int = 5,
                 backoff_s: float = 1.0, pool_size: int = 4) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL must start with http:// or https://: {url[:100]!r}")
        if not token:
            raise ConfigError("no worker token (BULKBACKUP_WORKER_TOKEN)")
        self.url = url.rstrip("/")
        self.timeout_s, self.upload_timeout_s = timeout_s, upload_timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        # Sent with every request (a request's own headers replace the pool's).
        self._auth = {"Authorization": f"Bearer {token}"}
        self._pool = BoundedPool(pool_size)

    def close(self) -> None:
        self._pool.clear()

    # -- the core: one request, retried ------------------------------------------------------

    def call(self, c: Call) -> tuple[int, bytes]:
        """(status, body) of a 2xx or 404 answer; raises as the module says otherwise."""
        with self.answer(c) as got:
            return got.status, got.read_all()

    def answer(self, c: Call) -> Answer:
        """The open answer (2xx or 404), its body still to read (the caller closes it)."""
        delay_s = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                got = self._open(c)
                if got.status < 300 or got.status == 404:
                    return got
                with got:
                    status, after, body = got.status, got.headers.get("Retry-After", ""), \
                        got.read_all()
            except (urllib3.exceptions.HTTPError, OSError, Overdue, SlowRead) as exc:
                if (bad := certificate_failure(exc)) is not None:
                    raise ServerUntrusted(untrusted_message("the server", bad)) from None
                why, wait_s = f"{type(exc).__name__}: {exc}", delay_s
            else:
                why, wait_s = self._refusal(status, body), delay_s
                if status == 429 and str(after).isdigit():
                    wait_s = min(float(after), BACKOFF_MAX_S)
            if attempt == self.retries:
                raise ServerUnavailable(f"{c.method} {c.path}: {why}")
            time.sleep(wait_s)
            delay_s = min(delay_s * 2, BACKOFF_MAX_S)
        raise AssertionError  # pragma: no cover

    def _open(self, c: Call) -> Answer:
        headers = {**(c.headers or {}), **self._auth}
        body: bytes | Iterator[bytes] | None
        if isinstance(c.body, Path):
            headers["Content-Length"] = str(c.body.stat().st_size)
            body = _file_chunks(c.body)
        elif c.body is None or isinstance(c.body, bytes):
            body = c.body
        else:  # an open file (run/uploads.py: its name may be gone already)
            headers["Content-Length"] = str(os.fstat(c.body.fileno()).st_size)
            c.body.seek(0)
            body = _read_chunks(c.body)
        ends = time.monotonic() + (c.timeout_s or self.timeout_s)
        return self._pool.open(c.method, self.url + c.path, headers, ends=ends,
                               max_bytes=c.max_bytes, body=body)

    @staticmethod
    def _refusal(status: int, body: bytes) -> str:
        """The reason of a refusal; raises for the answers not worth retrying."""
        try:
            doc = orjson.loads(body)
            reason = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        except orjson.JSONDecodeError:
            reason = ""
        reason = reason[:300] or f"HTTP {status}"
        if status == 401:
            raise WorkerTokenRefused(f"the server refused the worker token: {reason}")
        if status in (403, 409):
            raise LockLost(reason)
        if status < 500 and status != 429:
            raise ServerRefused(f"HTTP {status}: {reason}")
        return f"HTTP {status}: {reason}"

    def _json(self, method: str, path: str, doc: dict[str, Any] | None = None) -> Any:
        status, body = self.call(Call(method, path, orjson.dumps(doc or {}),
                                      {"Content-Type": "application/json"}))
        return None if status == 404 else orjson.loads(body)

    # -- leases ------------------------------------------------------------------------------

    def lease(self, n: int, run_start: float | None = None) -> Lease:
        doc: dict[str, Any] = {"n": n}
        if run_start is not None:
            doc["run_start"] = run_start
        got = self._json("POST", "/api/lease", doc)
        in_flight = got.get("in_flight")
        return Lease(str(got["lease"]), [str(x) for x in got["users"]], int(got["remaining"]),
                     int(got["lock_ttl_s"]), float(got["server_time"]),
                     None if in_flight is None else int(in_flight))

    def status(self, run_start: float | None = None) -> Status:
        """What is left of a run started at ``run_start`` (default: now)."""
        doc = {} if run_start is None else {"run_start": run_start}
        got = self._json("POST", "/api/lease/status", doc)
        return Status(int(got["remaining"]), int(got["in_flight"]), int(got["lock_ttl_s"]),
                      float(got["server_time"]))

    def refresh(self, logins: list[str]) -> tuple[list[str], list[str]]:
        """(kept, lost) among ``logins``."""
        got = self._json("POST", "/api/lease/refresh", {"users": logins})
        return list(got["kept"]), list(got["lost"])

    def complete(self, login: str, synced: bool, counts: str = "", repos: int = 0,
                 nbytes: int = 0, run_start: float | None = None, error: str = "",
                 verify: list[str] | None = None) -> Outcome:
        """``error`` without ``counts``: a sync that listed nothing; the server gives the
        user's summary that error (Claimer.summary_with_error). ``verify``: the repositories
        whose increments the sync committed (`verify --sample` checks them first)."""
        doc: dict[str, Any] = {"synced": synced, "counts": counts, "repos": repos,
                               "bytes": nbytes, "error": error, "verify": verify or []}
        if run_start is not None:
            doc["run_start"] = run_start
        return Outcome(self._json("POST", f"/api/lease/{_q(login)}/complete", doc)["result"])

    def fail(self, login: str, run_start: float | None = None) -> Outcome:
        doc = {} if run_start is None else {"run_start": run_start}
        return Outcome(self._json("POST", f"/api/lease/{_q(login)}/fail", doc)["result"])

    def give_back(self, login: str) -> Outcome:
        return Outcome(self._json("POST", f"/api/lease/{_q(login)}/give-back")["result"])

    # -- the leased user's objects -----------------------------------------------------------

    def head(self, login: str, key: str) -> Head | None:
        status, body = self.call(Call("GET", f"/api/lease/{_q(login)}/heads/{_q(key)}"))
        return None if status == 404 else _head(orjson.loads(body))

    def state(self, login: str) -> UserState:
        """The user object's head and the shallow listing of the user's archives, in one
        request (what a sync reads first)."""
        doc = self._json("GET", f"/api/lease/{_q(login)}/state")
        objects = doc.get("objects")
        return UserState(None if doc.get("user") is None else _head(doc["user"]),
                         None if objects is None else [_info(o) for o in objects])

    def read(self, login: str, key: str, start: int = 0, end: int | None = None,
             max_bytes: int = JSON_MAX_BYTES) -> bytes | None:
        """Bytes ``start`` to ``end`` of ``key`` (at most ``max_bytes``); None: no object."""
        query = urlencode({"start": start, **({"end": end} if end is not None else {})})
        status, body = self.call(Call("GET", f"/api/lease/{_q(login)}/objects/{_q(key)}?"
                                      f"{query}", timeout_s=self.upload_timeout_s,
                                      max_bytes=max_bytes))
        return None if status == 404 else body

    def open(self, login: str, key: str, start: int = 0, end: int | None = None
             ) -> BinaryIO | None:
        """A stream of bytes ``start`` to ``end`` of ``key``, read as it is consumed (a bundle
        header is read without the pack behind it); None: no object. The caller closes it."""
        query = urlencode({"start": start, **({"end": end} if end is not None else {})})
        got = self.answer(Call("GET", f"/api/lease/{_q(login)}/objects/{_q(key)}?{query}",
                               timeout_s=self.upload_timeout_s, max_bytes=STREAM_MAX_BYTES))
        if got.status == 404:
            got.close()
            return None
        return io.BufferedReader(_AnswerReader(got), buffer_size=UPLOAD_CHUNK)

    def list(self, login: str, prefix: str, shallow: bool = False) -> list[ObjectInfo]:
        query = urlencode({"prefix": prefix, "shallow": "1" if shallow else ""})
        doc = self._json("GET", f"/api/lease/{_q(login)}/list?{query}")
        return [_info(o) for o in (doc or {}).get("objects", [])]

    def put(self, login: str, key: str, data: bytes | Path | BinaryIO,
            metadata: Mapping[str, str]) -> None:
        """Send an archive (a file, by path or open, is streamed); the server writes it
        whole, fenced by the lease, or not at all."""
        headers = {METADATA_HEADER: orjson.dumps(clean_metadata(metadata)).decode(),
                   "Content-Type": "application/octet-stream"}
        if isinstance(data, bytes):
            headers["Content-Length"] = str(len(data))
        self.call(Call("PUT", f"/api/lease/{_q(login)}/objects/{_q(key)}", data, headers,
                       timeout_s=self.upload_timeout_s))

    # -- archives straight to the bucket (web/lease_uploads.py) ------------------------------

    def offer(self, login: str, key: str, size: int) -> Offer:
        """Where to send ``key``'s ``size`` bytes: a presigned PUT, or through serve."""
        doc = self._json("POST", f"/api/lease/{_q(login)}/uploads", {"key": key, "size": size})
        if not isinstance(doc, dict):  # 404: a serve without direct uploads
            return Offer(offered=False)
        url, staging, least = doc.get("url"), doc.get("staging"), doc.get("min_size")
        least = least if isinstance(least, int) and not isinstance(least, bool) else 0
        if not isinstance(url, str) or not isinstance(staging, str):
            return Offer(offered=doc.get("direct") is not False, min_size=least)
        if not url.startswith(("http://", "https://")) or len(url) > OFFER_URL_MAX_CHARS:
            raise ServerRefused("the server offered an invalid upload URL")
        return Offer(True, url, staging, least)

    def put_staged(self, url: str, file: BinaryIO) -> None:
        """``file`` to a presigned URL (the bucket, not serve: no worker token is sent)."""
        size = os.fstat(file.fileno()).st_size
        file.seek(0)
        ends = time.monotonic() + self.upload_timeout_s
        with self._pool.open("PUT", url, {"Content-Length": str(size)}, ends=ends,
                             max_bytes=JSON_MAX_BYTES, body=_read_chunks(file)) as got:
            if got.status >= 300:
                raise ServerRefused(f"the bucket answered HTTP {got.status}")
            got.read_all()

    def commit(self, login: str, key: str, staging: str, size: int,
               metadata: Mapping[str, str]) -> None:
        """Have serve check the staged upload and write it to ``key``, fenced by the lease."""
        self._json("POST", f"/api/lease/{_q(login)}/uploads/commit",
                   {"key": key, "staging": staging, "size": size,
                    "metadata": clean_metadata(metadata)})

    def replace_metadata(self, login: str, key: str, metadata: Mapping[str, str]) -> None:
        self._json("POST", f"/api/lease/{_q(login)}/metadata/{_q(key)}",
                   {"metadata": clean_metadata(metadata)})

    def copy(self, login: str, src: str, dest: str) -> bool:
        """False when ``src`` does not exist."""
        return self._json("POST", f"/api/lease/{_q(login)}/copy",
                          {"from": src, "to": dest}) is not None

    def delete(self, login: str, key: str) -> None:
        self.call(Call("DELETE", f"/api/lease/{_q(login)}/objects/{_q(key)}"))


@dataclass(frozen=True)
class Offer:
    """serve's answer to an upload: a presigned PUT of a staging key, or none (``offered``:
    whether serve offers them at all; if not, asking again is a request for nothing)."""

    offered: bool
    url: str = ""
    staging: str = ""
    min_size: int = 0  # smaller uploads are not offered (need not be asked)


class _AnswerReader(io.RawIOBase):
    """An answer's body as a raw stream (bounded reads: http/bounded.Answer.read1)."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        chunk = self._answer.read1(len(buf))
        buf[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._answer.close()
        super().close()


def _head(doc: dict[str, Any]) -> Head:
    return Head(int(doc["size"]), datetime.fromisoformat(doc["last_modified"]),
                {str(k).lower(): str(v) for k, v in doc["metadata"].items()})


def _info(doc: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(str(doc["key"]), int(doc["size"]),
                      datetime.fromisoformat(doc["last_modified"]))


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from _read_chunks(f)


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(UPLOAD_CHUNK):
        yield chunk
