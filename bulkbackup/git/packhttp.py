"""The HTTP under packfetch's fetch: dulwich speaks git's protocol for the pack (the request,
side-band), refadvert.py reads the refs; the HTTP under both is ours. Kept apart from the
fetch (wants, haves, the bundle) because this is where the untrusted server is bounded.

`Http`: a pool of the one bounded reader (http/bounded.py: no redirects or retries, a
watchdog that shuts the socket at the deadline, a per-read timeout, a byte cap) per fetch,
only the two smart URLs ever requested, the token under `GitAuth`'s rule (as gitops.git_env
sends it), only smart answers (a dumb or non-git answer is a GitError, never dulwich's fallback
to the dumb protocol); every answer whole by the fetch's deadline (run.git_timeout_s), bounded
in bytes (the pack by packfetch.pack_limit) and by git's low-speed rule. `Client`: dulwich's
AbstractHttpGitClient over it, for one stateless fetch in protocol v2 (`ls-refs` with ref
prefixes, then `fetch`), or v0 from a server without v2.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import urllib3
from dulwich.client import AbstractHttpGitClient, default_user_agent_string
from dulwich.objects import ObjectID
from dulwich.protocol import CAPABILITY_OFS_DELTA, agent_string
from dulwich.refs import Ref

from bulkbackup.config import RunSettings
from bulkbackup.errors import GitError, RemoteNotFound, one_line
from bulkbackup.git.refadvert import (
    Advert,
    Pkts,
    end,
    ls_refs_request,
    pkt,
    read_info_refs,
    read_ls_refs,
)
from bulkbackup.http.bounded import Answer, BoundedPool, Overdue, SlowRead, TooLarge
from bulkbackup.redact import redact

if TYPE_CHECKING:
    from dulwich.client import HTTPResponse

_GET, _POST = "info/refs?service=git-upload-pack", "git-upload-pack"
_ADVERT_TYPE = "application/x-git-upload-pack-advertisement"
_RESULT_TYPE = "application/x-git-upload-pack-result"
_MAX_ADVERT_BYTES = 64 << 20  # one ref listing's answer (parsed as it streams)
_CHUNK = 1 << 16


def base_url(clone_url: str) -> str:
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


class Client(AbstractHttpGitClient):
    """dulwich's smart HTTP client over `Http`. Discovery is ours (refadvert.py: v2 ls-refs
    with ``prefixes``, or v0's advertisement) and hands the refs to ``discovered`` (HEAD's
    target too, which fetch_pack does not return before it asks for the pack); dulwich gets
    no refs, only the capabilities: `wants` takes the ids to want and to have from ``want``."""

    def __init__(self, base: str, http: Http, prefixes: tuple[str, ...], pull_refs: bool,
                 discovered: Callable[[Advert], None],
                 want: Callable[[], tuple[list[str], list[str]]]) -> None:
        super().__init__(base, dumb=False, thin_packs=True, quiet=True)
        self._wire, self._discovered, self._want = http, discovered, want
        self._prefixes, self._pull_refs = prefixes, pull_refs
        self.haves = _Haves()

    def wants(self, refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
        wanted, haves = self._want()
        self.haves.ids = iter(haves)
        return [ObjectID(w.encode()) for w in wanted]

    def _http_request(self, url: str, headers: dict[str, str] | None = None,
                      data: bytes | Iterator[bytes] | None = None, raise_for_status: bool = True
                      ) -> tuple[HTTPResponse, Callable[[int], bytes]]:
        if data is None:  # only discovery GETs, and that is ours
            raise GitError("git fetch refused: an unexpected request (dumb HTTP)")
        return self._wire.request(url, headers or {}, data)

    def _smart_request(self, service: str, url: str, data: bytes | Iterator[bytes] | None
                       ) -> tuple[HTTPResponse, Callable[[int], bytes]]:
        # dulwich's v2 fetch asks for thin-pack only: ofs-delta too, as v0 and git do (an
        # offset costs a few bytes, a REF_DELTA base 20).
        if self.protocol_version == 2 and isinstance(data, bytes):
            data = _with_arg(data, CAPABILITY_OFS_DELTA + b"\n")
        return super()._smart_request(service, url, data)

    def _discover_references(
        self, service: bytes, base_url: str, protocol_version: int | None = None,
        ref_prefix: Sequence[bytes] | None = None,
    ) -> tuple[dict[Ref, ObjectID | None], set[bytes], str, dict[Ref, Ref], dict[Ref, ObjectID]]:
        advert = self._discover()
        self.protocol_version = advert.version
        self._discovered(advert)
        return {}, advert.capabilities, base_url, {}, {}

    def discover(self) -> Advert:
        """The remote's refs under the prefixes, and nothing fetched (a ref listing)."""
        return self._discover()

    def _discover(self) -> Advert:
        """`GET info/refs` asking for v2: v0's advertisement, or v2's capabilities and then
        the `ls-refs` POST; each answer parsed as it streams."""
        body, read = self._wire.request(self._wire.base + _GET,
                                        {"Accept": "*/*", "Git-Protocol": "version=2"}, None)
        with contextlib.closing(body):
            got = read_info_refs(Pkts(read), self._prefixes, self._pull_refs)
            end(read)
        if isinstance(got, Advert):
            return got
        request = ls_refs_request(got, self._prefixes, agent_string())
        body, read = self._wire.request(self._wire.base + _POST, {
            "Content-Type": "application/x-git-upload-pack-request", "Accept": _RESULT_TYPE,
            "Git-Protocol": "version=2", "Content-Length": str(len(request))}, request,
            listing=True)
        with contextlib.closing(body):
            advert = read_ls_refs(Pkts(read), self._prefixes, self._pull_refs, got)
            end(read)
        return advert


def _with_arg(request: bytes, arg: bytes) -> bytes:
    """A v2 command with ``arg`` first among its arguments (after the delimiter packet)."""
    i = 0
    while i + 4 <= len(request):
        head = request[i : i + 4]
        if head == b"0001":
            return request[: i + 4] + pkt(arg) + request[i + 4 :]
        i += max(4, int(head, 16))
    return request


class Http:
    """The fetch's HTTP: two URLs, bounded answers, one deadline for them all; `with` closes
    what is left open. ``auth``: the Authorization header (GitAuth.authorization) or None;
    ``max_pack``: the most pack bytes the fetch takes (packfetch.pack_limit)."""

    def __init__(self, base: str, auth: str | None, run: RunSettings, max_pack: int) -> None:
        self.base, self.auth, self.run, self.max_pack = base, auth, run, max_pack
        self.deadline = time.monotonic() + run.git_timeout_s
        self.pool = BoundedPool(1, num_pools=1)
        self.answers: list[Answer] = []
        self.window_start, self.window_bytes = time.monotonic(), 0

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        for answer in self.answers:  # closed already, unless the fetch was cut short
            answer.close()
        self.pool.clear()

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        return left

    def timed_out(self) -> GitError:
        return GitError(f"git fetch timed out after {self.run.git_timeout_s:g}s")

    def failure(self, exc: BaseException) -> GitError:
        if isinstance(exc, Overdue) or time.monotonic() >= self.deadline:
            return self.timed_out()
        if isinstance(exc, SlowRead):  # the per-read timeout: only with the low-speed rule
            return self.stalled()
        return GitError(f"git fetch failed: {redact(one_line(exc))[:300]}")

    def stalled(self) -> GitError:
        return GitError(f"git fetch failed: stalled: less than {self.run.git_low_speed_bytes_s}"
                        f" bytes/s for {self.run.git_low_speed_time_s}s")

    def request(self, url: str, headers: Mapping[str, str], data: bytes | Iterator[bytes] | None,
                listing: bool = False) -> tuple[_Body, Callable[[int], bytes]]:
        """GET info/refs (``data`` None) or POST git-upload-pack; ``listing``: a POST that
        lists refs (v2 ls-refs), bounded as a listing rather than as a pack. A read waiting
        git_low_speed_time_s (when the low-speed rule is on) is a stall."""
        post = data is not None
        if url != self.base + (_POST if post else _GET):
            raise GitError("git fetch refused: a request to another URL (dumb HTTP, packfile URI)")
        self.left()
        low = self.run.git_low_speed_bytes_s > 0
        send = {"User-Agent": default_user_agent_string(), **headers, "Pragma": "no-cache"}
        if self.auth:
            send["Authorization"] = self.auth
        pack = post and not listing
        budget = self.max_pack + (16 << 20) if pack else _MAX_ADVERT_BYTES
        try:
            answer = self.pool.open(
                "POST" if post else "GET", url, send, body=data, ends=self.deadline,
                max_bytes=budget, read_s=self.run.git_low_speed_time_s if low else None,
                connect_s=60.0)
        except (Overdue, SlowRead, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.failure(exc) from None
        self.answers.append(answer)
        self.window_start, self.window_bytes = time.monotonic(), 0
        _refuse(answer, _RESULT_TYPE if post else _ADVERT_TYPE)
        body = _Body(self, answer, "the answer" if pack else "the ref advertisement")
        return body, body.read

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


def _refuse(resp: Answer, content_type: str) -> None:
    """Only a 200 with the smart protocol's Content-Type; never a redirect (not followed)."""
    got = resp.headers.get("Content-Type", "")
    if resp.status == 200 and got.split(";")[0].strip().lower() == content_type:
        return
    resp.close()
    if 300 <= resp.status < 400:
        raise GitError(f"git fetch failed: HTTP {resp.status}, a redirect (never followed)")
    if resp.status == 404:
        raise RemoteNotFound("git fetch failed: HTTP 404, repository not found")
    if resp.status != 200:
        raise GitError(f"git fetch failed: HTTP {resp.status}")
    shown = re.sub(r"[^ -~]", "?", got)[:80]
    raise GitError(f"git fetch refused: not a smart git server (dumb HTTP or not git): "
                   f"Content-Type {shown!r}")


class _Body:
    """One answer as dulwich expects it (its HTTPResponse), read in exact sizes (pkt-lines
    need them) under the answer's bounds and git's low-speed rule."""

    def __init__(self, http: Http, answer: Answer, what: str) -> None:
        self.http, self.answer, self.what = http, answer, what
        self.status, self.headers = answer.status, cast(Mapping[str, str], answer.headers)
        self.content_type: str | None = answer.headers.get("Content-Type")
        self.redirect_location = ""

    def geturl(self) -> str | None:
        return None

    def close(self) -> None:
        self.answer.close()  # read whole: the connection can serve the next request

    def read(self, amt: int | None = None) -> bytes:
        n, parts = _CHUNK if amt is None else amt, list[bytes]()
        while n > 0:
            try:
                chunk = self.answer.read1(min(n, _CHUNK))
            except TooLarge:
                raise GitError(f"git fetch refused: {self.what} is larger than "
                               f"{self.answer.max_bytes} bytes") from None
            except (Overdue, SlowRead, urllib3.exceptions.HTTPError, OSError) as exc:
                raise self.http.failure(exc) from None
            if not chunk:
                break
            self.http.received(len(chunk))
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)
