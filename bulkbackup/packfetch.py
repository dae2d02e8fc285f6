"""Fetch what is new in a remote repository since a known state, as an increment bundle.

No local repository: the previous state is only its refs. One GET of the ref advertisement
(git protocol v0 over smart HTTP, so a repository that did not change costs one request),
then, if a kept ref points to an id the old state lacks, one POST that wants those ids and has
every old id, answered with a thin pack. The bundle: `# v2 git bundle`, `-<id>` per old branch
tip, the kept refs and HEAD, a blank line, the pack as it arrived.

dulwich speaks the protocol (discovery, the request, side-band); the HTTP under it is ours
(`_Http`): a urllib3 PoolManager per fetch with redirects and retries off, only the two smart
URLs ever requested, the token as gitops.git_env would send it, only smart answers (a dumb or
non-git answer is a GitError, never dulwich's fallback to the dumb protocol), every body
bounded in bytes, by the deadline (a watchdog shuts the sockets) and by git's low-speed rule.

Prerequisites are old branch tips only: a branch always points to a commit (git refuses
anything else), but a tag's peeled object may be a tree or a blob (git.git's junio-gpg-pub tag
points to a blob) and `git bundle verify` refuses a prerequisite that is not a commit. The thin
pack may still take delta bases reachable only from old tags: `git fetch` from a bundle runs
`index-pack --fix-thin`, which finds them in the repository the earlier parts were applied to.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast
from urllib.parse import urlsplit

import urllib3
import urllib3.connection
from dulwich.client import AbstractHttpGitClient, default_user_agent_string
from dulwich.objects import ObjectID
from dulwich.refs import Ref

from bulkbackup.config import GitHubSettings, RunSettings
from bulkbackup.errors import BulkbackupError, GitError, one_line
from bulkbackup.redact import redact

if TYPE_CHECKING:
    from dulwich.client import HTTPResponse

_GET, _POST = "info/refs?service=git-upload-pack", "git-upload-pack"
_ADVERT_TYPE = "application/x-git-upload-pack-advertisement"
_RESULT_TYPE = "application/x-git-upload-pack-result"
_MAX_REFS = 500_000  # GitHub's biggest repositories: a few hundred thousand refs/pull/*
_MAX_ADVERT_BYTES = 64 << 20  # held whole while dulwich parses it
_CHECK_EVERY = 4 << 20  # pack bytes between two calls of check()
_CHUNK = 1 << 16
_OID = re.compile(r"[0-9a-f]{40}")
# What `git check-ref-format` refuses, roughly; a name that passes is safe in a bundle header.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(?:/|$)|[/.]$")
_PACK_HEAD = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00"
EMPTY_PACK = _PACK_HEAD + hashlib.sha1(_PACK_HEAD, usedforsecurity=False).digest()


@dataclass(frozen=True)
class FetchedIncrement:
    # The increment bundle written at `dest`; None when the remote refs equal old_refs and
    # HEAD is unchanged (nothing to store), or when the remote has no refs to keep.
    bundle: Path | None
    refs: dict[str, str]  # remote refs kept: name -> id; no HEAD, no `^{}`, refs/pull/* per run
    head: str | None  # id of `branch` (the bundle's HEAD line); None without branches
    branch: str | None  # default_branch if a branch, else the remote HEAD's branch, else first
    received_bytes: int  # pack bytes received (0 when no pack was requested)


def pack_limit(run: RunSettings) -> int:
    """The most pack bytes one fetch takes: twice run.max_repo_kb, plus 1 MiB. GitHub's `size`
    (held against max_repo_kb before a fetch) is approximate and lags pushes, and a pack made
    for one fetch (a rewritten history) can be packed less tightly than the server's own; the
    MiB is for tiny repositories. A server that sends without end still stops here."""
    return 2 * run.max_repo_kb * 1024 + (1 << 20)


def fetch_increment(clone_url: str, old_refs: dict[str, str], default_branch: str | None,
                    dest: Path, run: RunSettings, gh: GitHubSettings, token: str | None,
                    check: Callable[[], None] = lambda: None) -> FetchedIncrement:
    """Fetch what ``clone_url`` has beyond ``old_refs`` and write it as a bundle at ``dest``.

    ``old_refs`` is the previous state (name -> id); it may hold `HEAD` (as `git bundle
    list-heads` gives it): then a different head alone makes an increment. ``check`` runs
    between steps and every few MB of pack; what it raises is raised as it is, with ``dest``
    absent. Every other failure is a GitError; on failure ``dest`` is absent.
    """
    dest.unlink(missing_ok=True)
    base = _base_url(clone_url)
    old, old_head = _old_state(old_refs)
    http = _Http(base, _authorization(base, gh, token), run)
    guard = _Guard(check)
    writer = _Writer(dest, pack_limit(run), guard)
    client = _Client(base, http, writer, guard, lambda advert: _plan(
        advert, old, old_head, default_branch, run.pull_refs))
    try:
        with http:
            client.fetch_pack("", client.wants, client.haves, writer.pack, protocol_version=0)
        plan = client.plan
        assert plan is not None  # made by client.wants, which fetch_pack always calls
        if plan.unchanged:
            return FetchedIncrement(None, plan.refs, plan.head, plan.branch, 0)
        if not plan.wants:  # refs deleted, moved to ids already had, or only HEAD moved
            writer.start(plan.header)
            writer.pack(EMPTY_PACK)
        guard()
        writer.finish()
        received = writer.size if plan.wants else 0
        return FetchedIncrement(dest, plan.refs, plan.head, plan.branch, received)
    except BulkbackupError:
        raise
    except Exception as exc:
        if exc is guard.raised:
            raise
        raise http.failure(exc) from None
    finally:
        writer.discard()


class _Guard:
    """Calls ``check``, remembering what it raised: that is raised as it is, not a GitError."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self.raised: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.check()
        except BaseException as exc:
            self.raised = exc
            raise


def _base_url(clone_url: str) -> str:
    """`scheme://host[:port]/path/` of an http(s) URL without credentials, query or fragment."""
    try:
        parts = urlsplit(clone_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise GitError("git fetch refused: the clone URL is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise GitError("git fetch refused: only http(s) clone URLs")
    if "@" in parts.netloc or parts.query or parts.fragment or "?" in clone_url:
        raise GitError("git fetch refused: a clone URL with credentials, a query or a fragment")
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc) or not re.fullmatch(
            r"[A-Za-z0-9._~%/+-]*", parts.path):
        raise GitError("git fetch refused: unexpected characters in the clone URL")
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}/"


def _origin(scheme: str, netloc: str) -> str:
    default = {"https": ":443", "http": ":80"}[scheme]
    return netloc.lower().removesuffix(default)


def _authorization(base: str, gh: GitHubSettings, token: str | None) -> str | None:
    """The token's header, under gitops.git_env's rule: only if github.token_for_git, only to
    https://<github.clone_host>/ (plain http too only with github.allow_http_token)."""
    parts = urlsplit(base)
    schemes = ("https", "http") if gh.allow_http_token else ("https",)
    if not token or not gh.token_for_git or parts.scheme not in schemes:
        return None
    if _origin(parts.scheme, parts.netloc) != _origin(parts.scheme, gh.clone_host):
        return None
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _old_state(old_refs: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """(refs without HEAD and peeled entries, HEAD's id or None), ids checked."""
    old: dict[str, str] = {}
    head = None
    for name, oid in old_refs.items():
        if not _OID.fullmatch(oid):
            raise GitError("git fetch refused: the previous state has a malformed object id")
        if name == "HEAD":
            head = oid
        elif not name.endswith("^{}"):
            old[name] = oid
    return old, head


@dataclass(frozen=True)
class _Advert:
    refs: dict[str, str]  # every advertised ref under refs/, checked
    head_target: str | None  # what the remote HEAD points to


def _advert(refs: Mapping[Ref, ObjectID | None], symrefs: Mapping[Ref, Ref]) -> _Advert:
    if len(refs) > _MAX_REFS:
        raise GitError(f"git fetch refused: the server advertises more than {_MAX_REFS} refs")
    out: dict[str, str] = {}
    for raw, oid in refs.items():
        if oid is None or not raw.startswith(b"refs/"):
            continue  # HEAD (and anything outside refs/, which `+refs/*:refs/*` ignores)
        try:
            name, hexid = raw.decode(), oid.decode("ascii")
        except UnicodeDecodeError:
            raise GitError("git fetch failed: the server advertised a ref that is not UTF-8"
                           ) from None
        if not _OID.fullmatch(hexid):
            raise GitError("git fetch failed: the server advertised a malformed object id")
        if len(name) > 1024 or _BAD_REF.search(name):
            raise GitError("git fetch failed: the server advertised an invalid ref name")
        out[name] = hexid
    target = symrefs.get(Ref(b"HEAD"))
    return _Advert(out, target.decode("utf-8", "replace") if target else None)


@dataclass(frozen=True)
class _Plan:
    refs: dict[str, str]
    head: str | None
    branch: str | None
    wants: list[str]
    haves: list[str]
    header: bytes
    unchanged: bool  # nothing to store


def _plan(advert: _Advert, old: dict[str, str], old_head: str | None,
          default_branch: str | None, pull_refs: bool) -> _Plan:
    refs = {n: i for n, i in advert.refs.items() if pull_refs or not n.startswith("refs/pull/")}
    heads = sorted(n.removeprefix("refs/heads/") for n in refs if n.startswith("refs/heads/"))
    target = advert.head_target or ""
    branch = (default_branch if default_branch is not None and default_branch in heads
              else target.removeprefix("refs/heads/") if target.startswith("refs/heads/")
              and target in refs else heads[0] if heads else None)
    head = refs[f"refs/heads/{branch}"] if branch is not None else None
    known = {*old.values(), *([old_head] if old_head else [])}
    unchanged = not refs or (refs == old and old_head in (None, head))
    # dulwich sends at most 256 haves in its one stateless request (client.MAX_IN_VAIN): the
    # likeliest bases first, the old tips of the refs that moved, then HEAD and the branches.
    moved = [old[n] for n in sorted(old) if refs.get(n) != old[n]]
    tips = [old[n] for n in sorted(old) if n.startswith("refs/heads/")]
    haves = list(dict.fromkeys([*moved, *([old_head] if old_head else []), *tips,
                                *(old[n] for n in sorted(old))]))
    prerequisites = sorted(set(tips))
    lines = ["# v2 git bundle\n", *(f"-{p}\n" for p in prerequisites),
             *(f"{refs[n]} {n}\n" for n in sorted(refs)), f"{head} HEAD\n" if head else "", "\n"]
    return _Plan(refs, head, branch, sorted(set(refs.values()) - known), haves,
                 "".join(lines).encode(), unchanged)


class _Haves:
    """dulwich's graph walker: the old ids, in order; acks change nothing (one request)."""

    def __init__(self) -> None:
        self.ids: Iterator[str] = iter(())

    def __next__(self) -> ObjectID | None:
        oid = next(self.ids, None)
        return ObjectID(oid.encode()) if oid else None

    def ack(self, sha: ObjectID, /) -> None:
        pass

    def nak(self) -> None:
        pass


class _Client(AbstractHttpGitClient):
    """dulwich's smart HTTP client over `_Http`. Discovery keeps what it found (with HEAD's
    target, which fetch_pack does not return before it asks for the pack) and `wants` makes
    the plan from it, starting the bundle when a pack will come."""

    def __init__(self, base: str, http: _Http, writer: _Writer, guard: _Guard,
                 planner: Callable[[_Advert], _Plan]) -> None:
        super().__init__(base, dumb=False, thin_packs=True, quiet=True)
        self._wire, self._writer, self._guard, self._planner = http, writer, guard, planner
        self.advert: _Advert | None = None
        self.plan: _Plan | None = None
        self.haves = _Haves()

    def wants(self, refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
        self._guard()
        assert self.advert is not None  # discovery came first
        self.plan = self._planner(self.advert)
        self.haves.ids = iter(self.plan.haves)
        if self.plan.wants:
            self._writer.start(self.plan.header)
        return [ObjectID(w.encode()) for w in self.plan.wants]

    def _http_request(self, url: str, headers: dict[str, str] | None = None,
                      data: bytes | Iterator[bytes] | None = None, raise_for_status: bool = True
                      ) -> tuple[HTTPResponse, Callable[[int], bytes]]:
        return self._wire.request(url, headers or {}, data)

    def _discover_references(
        self, service: bytes, base_url: str, protocol_version: int | None = None,
        ref_prefix: Sequence[bytes] | None = None,
    ) -> tuple[dict[Ref, ObjectID | None], set[bytes], str, dict[Ref, Ref], dict[Ref, ObjectID]]:
        found = super()._discover_references(service, base_url, protocol_version, ref_prefix)
        if self.dumb:  # _Http refuses non-smart answers: never reached, never allowed
            raise GitError("git fetch refused: the server speaks only the dumb HTTP protocol")
        self.advert = _advert(found[0], found[3])
        return found


# The sockets of the fetch running on this thread (see _Http): the watchdog shuts them down.
_live = threading.local()


def _register(sock: socket.socket | None) -> None:
    socks = getattr(_live, "socks", None)
    if socks is not None and sock is not None:
        socks.append(sock)


class _Conn(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register(self.sock)


class _TLSConn(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register(self.sock)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Conn


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConn


class _Http:
    """The fetch's HTTP: two URLs, bounded answers; `with` arms the deadline's watchdog."""

    def __init__(self, base: str, auth: str | None, run: RunSettings) -> None:
        self.base, self.auth, self.run = base, auth, run
        self.deadline = time.monotonic() + run.git_timeout_s
        self.expired = False
        self.socks: list[socket.socket] = []
        self.pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        self.pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        self.window_start, self.window_bytes = time.monotonic(), 0
        self._timer = threading.Timer(run.git_timeout_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Http:
        _live.socks = self.socks
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _live.socks = None
        self.pool.clear()

    def _expire(self) -> None:
        self.expired = True
        for sock in list(self.socks):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if self.expired or left <= 0:
            raise GitError(f"git fetch timed out after {self.run.git_timeout_s:g}s")
        return left

    def failure(self, exc: BaseException) -> GitError:
        if self.expired or time.monotonic() >= self.deadline:
            return GitError(f"git fetch timed out after {self.run.git_timeout_s:g}s")
        return GitError(f"git fetch failed: {redact(one_line(exc))[:300]}")

    def waited_too_long(self) -> GitError:
        """A socket read's timeout: the low-speed time, or what was left of the deadline."""
        if self.run.git_low_speed_bytes_s > 0 and time.monotonic() < self.deadline:
            return self.stalled()
        return GitError(f"git fetch timed out after {self.run.git_timeout_s:g}s")

    def stalled(self) -> GitError:
        return GitError(f"git fetch failed: stalled: less than {self.run.git_low_speed_bytes_s}"
                        f" bytes/s for {self.run.git_low_speed_time_s}s")

    def request(self, url: str, headers: Mapping[str, str], data: bytes | Iterator[bytes] | None
                ) -> tuple[_Body, Callable[[int], bytes]]:
        post = data is not None
        if url != self.base + (_POST if post else _GET):
            raise GitError("git fetch refused: a request to another URL (dumb HTTP, packfile URI)")
        left = self.left()
        low = self.run.git_low_speed_bytes_s > 0
        send = {"User-Agent": default_user_agent_string(), **headers, "Pragma": "no-cache"}
        if self.auth:
            send["Authorization"] = self.auth
        try:
            resp = self.pool.request(
                "POST" if post else "GET", url, body=data, headers=send, redirect=False,
                retries=False, preload_content=False,
                timeout=urllib3.Timeout(connect=min(left, 60.0), read=min(
                    left, self.run.git_low_speed_time_s) if low else left))
        except urllib3.exceptions.ReadTimeoutError:
            raise self.waited_too_long() from None
        except urllib3.exceptions.HTTPError as exc:
            raise self.failure(exc) from None
        self.window_start, self.window_bytes = time.monotonic(), 0
        _refuse(resp, _RESULT_TYPE if post else _ADVERT_TYPE)
        if post:
            body = _Body(self, resp, pack_limit(self.run) + (16 << 20), "the answer")
            return body, body.read
        whole = _Body(self, resp, _MAX_ADVERT_BYTES, "the ref advertisement")
        return whole, io.BytesIO(whole.read(_MAX_ADVERT_BYTES + 1)).read

    def received(self, size: int) -> None:
        """git's low-speed rule (curl's): fewer than git_low_speed_bytes_s bytes/s over
        git_low_speed_time_s seconds ends the fetch (a read waiting that long ends it too)."""
        if self.run.git_low_speed_bytes_s <= 0:
            return
        self.window_bytes += size
        now = time.monotonic()
        if now - self.window_start >= self.run.git_low_speed_time_s:
            if self.window_bytes < self.run.git_low_speed_bytes_s * (now - self.window_start):
                raise self.stalled()
            self.window_start, self.window_bytes = now, 0


def _refuse(resp: urllib3.BaseHTTPResponse, content_type: str) -> None:
    """Only a 200 with the smart protocol's Content-Type; never a redirect (not followed)."""
    got = resp.headers.get("Content-Type", "")
    if resp.status == 200 and got.split(";")[0].strip().lower() == content_type:
        return
    resp.close()
    if 300 <= resp.status < 400:
        raise GitError(f"git fetch failed: HTTP {resp.status}, a redirect (never followed)")
    if resp.status == 404:
        raise GitError("git fetch failed: HTTP 404, repository not found")
    if resp.status != 200:
        raise GitError(f"git fetch failed: HTTP {resp.status}")
    shown = re.sub(r"[^ -~]", "?", got)[:80]
    raise GitError(f"git fetch refused: not a smart git server (dumb HTTP or not git): "
                   f"Content-Type {shown!r}")


class _Body:
    """One answer as dulwich expects it (its HTTPResponse), read in exact sizes (pkt-lines
    need them), bounded in bytes, by the deadline and by the low-speed rule."""

    def __init__(self, http: _Http, resp: urllib3.BaseHTTPResponse, budget: int,
                 what: str) -> None:
        self.http, self.resp, self.budget, self.what = http, resp, budget, what
        self.status, self.headers = resp.status, cast(Mapping[str, str], resp.headers)
        self.content_type: str | None = resp.headers.get("Content-Type")
        self.redirect_location = ""
        self.size = 0
        self.eof = False

    def geturl(self) -> str | None:
        return None

    def close(self) -> None:
        if self.eof:
            self.resp.release_conn()  # read whole: the connection can serve the next request
        else:
            self.resp.close()

    def read(self, amt: int | None = None) -> bytes:
        n, parts = _CHUNK if amt is None else amt, list[bytes]()
        while n > 0 and not self.eof:
            self.http.left()
            try:
                chunk = self.resp.read1(min(n, _CHUNK))
            except urllib3.exceptions.ReadTimeoutError:
                raise self.http.waited_too_long() from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self.http.failure(exc) from None
            if not chunk:
                self.eof = True
                break
            self.size += len(chunk)
            if self.size > self.budget:
                raise GitError(f"git fetch refused: {self.what} is larger than "
                               f"{self.budget} bytes")
            self.http.received(len(chunk))
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)


class _Writer:
    """The bundle, written to a temp file beside ``dest`` (header, then the pack as it
    arrives: constant memory) and renamed to ``dest`` once the pack's checksum holds."""

    def __init__(self, dest: Path, cap: int, check: Callable[[], None]) -> None:
        self.dest, self.cap, self.check = dest, cap, check
        self.tmp: Path | None = None
        self.file: IO[bytes] | None = None
        self.size, self.next_check = 0, _CHECK_EVERY
        self.sha = hashlib.sha1(usedforsecurity=False)
        self.head, self.tail = b"", b""

    def start(self, header: bytes) -> None:
        fd, name = tempfile.mkstemp(dir=self.dest.parent, prefix=f".{self.dest.name}.",
                                    suffix=".tmp")
        self.tmp, self.file = Path(name), os.fdopen(fd, "wb")
        self.file.write(header)

    def pack(self, data: bytes) -> int:
        if self.file is None:
            raise GitError("git fetch failed: pack data that was not asked for")
        self.size += len(data)
        if self.size > self.cap:
            raise GitError(f"git fetch refused: the pack is larger than {self.cap} bytes "
                           "(2 x run.max_repo_kb + 1 MiB)")
        if len(self.head) < 12:
            self.head += data[: 12 - len(self.head)]
            if len(self.head) == 12 and (self.head[:4] != b"PACK" or self.head[4:8] not in (
                    b"\x00\x00\x00\x02", b"\x00\x00\x00\x03")):
                raise GitError("git fetch failed: the server sent something that is not a pack")
        buf = self.tail + data
        self.sha.update(buf[:-20])  # all but the last 20 bytes, the trailer
        self.tail = buf[-20:]
        self.file.write(data)
        if self.size >= self.next_check:
            self.next_check += _CHECK_EVERY
            self.check()
        return len(data)

    def finish(self) -> None:
        assert self.file is not None and self.tmp is not None
        if self.size < len(EMPTY_PACK) or self.tail != self.sha.digest():
            raise GitError("git fetch failed: the pack is truncated (bad checksum)")
        self.file.close()
        os.replace(self.tmp, self.dest)
        self.tmp = None

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
