"""A local GitHub stand-in for tests, benchmarks and the demo.

It serves `GET /users/<login>/repos` in GitHub's JSON shape (Link pagination, weak ETags and
304, X-RateLimit-* headers, 404 for unknown users, switches for rate limits, token budgets and
5xx answers) and the bare repositories it builds with `git fast-import` over git's smart HTTP
protocol through `git http-backend` (read-only). It counts what it serves so tests can assert
what was fetched.

    python -m bulkbackup.testing.forge --root DIR [--port PORT] [--sample] [--users N --repos M]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit

BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z: commit dates and default pushed_at
DEFAULT_FILES: dict[str, bytes] = {
    "README.md": b"# Hello\n\nA repository of the GitHub stand-in.\n",
    "src/pkg/main.py": b"print('hello')\n",
    "docs/naïve-ß.txt": "non-ASCII name: naïve ß\n".encode(),
    "bin/blob.dat": bytes(range(256)) * 4,  # NUL bytes included
}
PLACEHOLDER = "forge.invalid"  # host of stored URLs; served as the host the client asked for
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_JSON = {"Content-Type": "application/json; charset=utf-8"}
_WHO = b"A U Thor <author@example.com>"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class RepoSpec:
    name: str
    files: dict[str, bytes] | None = None  # default branch content; None: DEFAULT_FILES
    branches: dict[str, dict[str, bytes]] | None = None  # extra branches (on top of `files`)
    tags: Sequence[str] = ()  # each makes annotated tag `T` and lightweight tag `T-light`
    empty: bool = False  # a bare repository without commits (size 0)
    missing: bool = False  # listed, but no repository behind it: clones get 404
    fork: bool = False
    size_kb: int | None = None  # reported `size`; default from the file sizes
    default_branch: str = "main"
    pushed_at: str | None = None  # RFC 3339; default BASE_TIME
    updated_at: str | None = None  # default pushed_at
    stall: bool = False  # POST git-upload-pack sleeps forge.stall_s before answering
    # Each makes GitHub's `refs/pull/<n>/head`: a commit on the default branch's tip, with a
    # file `pull-<n>.txt`, that no branch or tag reaches.
    pulls: Sequence[int] = ()
    # The POST git-upload-pack that sends the pack writes its first bytes, then sleeps
    # forge.stall_s mid-body (a transfer that stalls after it started).
    stall_mid: bool = False


def _quote(path: str) -> bytes:
    raw = path.encode()
    if any(c in raw for c in b'"\\\n') or raw.startswith(b'"'):
        raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
        return b'"' + raw + b'"'
    return raw


def _commit(ref: str, when: int, files: dict[str, bytes], parent: str | None, msg: str,
            mark: int = 0) -> bytes:
    out = [f"commit {ref}\n".encode(), f"mark :{mark}\n".encode() if mark else b"",
           b"author %s %d +0000\n" % (_WHO, when), b"committer %s %d +0000\n" % (_WHO, when),
           b"data %d\n%s\n" % (len(msg), msg.encode())]
    if parent:
        out.append(f"from {parent}\n".encode())
    for path, data in files.items():
        out.append(b"M 100644 inline %s\ndata %d\n%s\n" % (_quote(path), len(data), data))
    return b"".join(out) + b"\n"


def _fast_import_stream(spec: RepoSpec) -> bytes:
    """Deterministic history: the default branch, extra branches, both kinds of tags."""
    if spec.empty:
        return b""
    files = DEFAULT_FILES if spec.files is None else spec.files
    out = [_commit(f"refs/heads/{spec.default_branch}", BASE_TIME, files, None, "initial", 1)]
    for i, (branch, extra) in enumerate((spec.branches or {}).items()):
        out.append(_commit(f"refs/heads/{branch}", BASE_TIME + i + 1, extra, ":1", branch))
    for n in spec.pulls:
        out.append(_commit(f"refs/pull/{int(n)}/head", BASE_TIME + 100 + int(n),
                           {f"pull-{int(n)}.txt": f"pull request {int(n)}\n".encode()}, ":1",
                           f"pull request {int(n)}"))
    for tag in spec.tags:
        msg = f"release {tag}\n".encode()
        out.append(f"reset refs/tags/{tag}-light\nfrom :1\n\n".encode())
        out.append(b"tag %s\nfrom :1\ntagger %s %d +0000\ndata %d\n%s\n"
                   % (tag.encode(), _WHO, BASE_TIME, len(msg), msg))
    return b"".join(out)


def _git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, input=data, check=False, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


@dataclass
class _Budget:
    remaining: int
    reset_at: float
    full: int
    window_s: float
    told_spent: bool = False  # an answer of this window said Remaining 0

    def refill_if_due(self, now: float) -> None:
        if now >= self.reset_at:
            self.remaining, self.reset_at = self.full, now + self.window_s
            self.told_spent = False

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.full), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
                "X-RateLimit-Used": str(self.full - self.remaining),
                "X-RateLimit-Resource": "core"}


class Forge:
    """The stand-in: `start()` (or `with`) serves it on `url`, `stop()` ends it.

    Content: add_user/add_users (built repositories), add_raw_repo_entry, push, remove_user;
    `renamed` (old login -> new: 301) and `link_host` (pagination links to another host).
    Failures: rate_limit, fail_5xx, set_token_budget, `require_known_tokens` (unknown token:
    401), RepoSpec.stall with `stall_s`. Observation: `counters` ("api", "api_<status>",
    "api_5xx", "info_refs", "upload_pack"; "api_after_spent": requests with a budgeted token
    after an answer had said its quota was spent), clones(), upload_packs(),
    `auth_headers_seen`.
    `counters`, `users` and the switches are guarded by `lock`.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.git_root = self.root / "git"
        self.git_root.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.url = ""
        self.lock = threading.Lock()
        self.users: dict[str, list[dict[str, Any]]] = {}  # login -> listing entries
        self.counters: Counter[str] = Counter()
        self.auth_headers_seen: list[str] = []
        self.stall_s = 30.0
        self.require_known_tokens = False
        self.renamed: dict[str, str] = {}  # old login -> new login: the API answers 301
        self.link_host: str | None = None  # set: pagination links name this host instead
        self.etag_suffix = ""  # appended inside every listing ETag (a misbehaving server)
        self.build_workers = max(4, os.cpu_count() or 1)
        self._per_repo: Counter[tuple[str, str, str]] = Counter()
        self._stalled: set[tuple[str, str]] = set()
        self._limited, self._limit_reset, self._limit_secondary = 0, 0.0, False
        self._fail, self._fail_status = 0, 502
        self._budgets: dict[str, _Budget] = {}
        self._core = _Budget(5000, time.time() + 3600, 5000, 3600)  # reported, never exhausted
        self._next_id = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._procs: set[subprocess.Popen[bytes]] = set()
        # Set to another server's base URL (e.g. a second Forge on `localhost` sharing this
        # root): every `info/refs` answers 302 to the same path there.
        self.git_redirect = ""
        self._stalled_mid: set[tuple[str, str]] = set()
        # A hostile API (tests of the client's bounds); each applies to every listing request.
        self.api_next_loop = False  # Link rel="next" names the page just served
        self.api_endless = False  # every page links to a next one, forever
        self.api_drip_s = 0.0  # > 0: a listing body goes out one byte per api_drip_s
        self.api_drip_head = False  # with api_drip_s: the status line and headers drip too
        self.api_pad_mb = 0  # > 0: listing bodies padded with this many MB of spaces (streamed)
        self.api_pad_unsized = False  # padded bodies without Content-Length (end at EOF)
        self.api_retry_after: str | None = None  # set: every answer is 429 with this Retry-After
        self.api_reset: str | None = None  # set: every answer is 403, Remaining 0, this Reset

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Forge:
        handler = type("Handler", (_Handler,), {"forge": self})
        self._stopping.clear()
        self._server = _Server((self.host, self.port), handler)
        self.url = f"http://{self.host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="forge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake stalls, kill backends, close connections, join all threads."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        self._stopping.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                conns, procs = dict(self._conns), list(self._procs)
            if not conns:
                break
            for proc in procs:
                proc.kill()
            for sock, thread in conns.items():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                thread.join(max(0.0, deadline - time.monotonic()))
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Forge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content ---------------------------------------------------------------------------

    def add_user(self, login: str, repos: Iterable[RepoSpec]) -> None:
        """Build the user's repositories (in parallel) and list them after any existing ones."""
        self.add_users({login: list(repos)})

    def add_users(self, users: dict[str, list[RepoSpec]]) -> None:
        """Build many users' repositories in one parallel batch: one `git fast-import` per
        distinct content (a template), then a copy of the template per repository."""
        jobs = [(login, spec) for login, specs in users.items() for spec in specs]
        templates: dict[str, tuple[bytes, str]] = {}
        keys = []
        for _, spec in jobs:
            stream = _fast_import_stream(spec)
            key = hashlib.sha1(stream + b"\0" + spec.default_branch.encode()).hexdigest()
            templates[key] = (stream, spec.default_branch)
            keys.append(key)
        with self.lock:  # ids in listing order, whatever order the copies finish in
            ids = range(self._next_id + 1, self._next_id + 1 + len(jobs))
            self._next_id += len(jobs)
        with ThreadPoolExecutor(self.build_workers) as pool:
            list(pool.map(lambda k: self._template(k, *templates[k]), templates))
            entries = list(pool.map(self._build, jobs, keys, ids))
        with self.lock:
            for login in users:
                self.users.setdefault(login, [])
            for (login, _), entry in zip(jobs, entries, strict=True):
                self.users[login].append(entry)

    def add_raw_repo_entry(self, login: str, entry: dict[str, Any]) -> None:
        """Append an arbitrary entry, served verbatim (for malicious-listing tests)."""
        with self.lock:
            self.users.setdefault(login, []).append(dict(entry))

    def remove_user(self, login: str) -> None:
        """The user is gone: the API answers 404 and the repositories are deleted."""
        with self.lock:
            self.users.pop(login, None)
        shutil.rmtree(self.git_root / login, ignore_errors=True)

    def push(self, login: str, name: str, files: dict[str, bytes]) -> None:
        """A new commit on the default branch; pushed_at/updated_at move strictly later."""
        with self.lock:
            entry = next(e for e in self.users[login] if e.get("name") == name)
            branch = entry["default_branch"]
        repo = self.git_root / login / f"{name}.git"
        if not repo.is_dir():
            raise FileNotFoundError(repo)
        has_tip = subprocess.run(["git", "rev-parse", "-q", "--verify", f"refs/heads/{branch}"],
                                 cwd=repo, capture_output=True, check=False).returncode == 0
        parent = f"refs/heads/{branch}^0" if has_tip else None
        stream = _commit(f"refs/heads/{branch}", int(time.time()), files, parent, "push")
        _git("fast-import", "--quiet", cwd=repo, data=stream)
        with self.lock:
            later = max(time.time(), _epoch(entry["pushed_at"]) + 1,
                        _epoch(entry["updated_at"]) + 1)
            entry["pushed_at"] = entry["updated_at"] = rfc3339(later)

    def _template(self, key: str, stream: bytes, branch: str) -> Path:
        """One bare repository per distinct content, copied for every repo that has it."""
        path = self.root / "templates" / f"{key}.git"
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix="tmp-"))
            _git("init", "--bare", "--quiet", "--template=", f"--initial-branch={branch}", str(tmp))
            if stream:
                _git("fast-import", "--quiet", cwd=tmp, data=stream)
            try:
                tmp.rename(path)
            except OSError:  # built concurrently by another Forge on the same root
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _build(self, job: tuple[str, RepoSpec], key: str, rid: int) -> dict[str, Any]:
        login, spec = job
        if not _NAME.fullmatch(login) or not _NAME.fullmatch(spec.name) or ".." in spec.name:
            raise ValueError(f"unsafe name {login}/{spec.name}")
        repo = self.git_root / login / f"{spec.name}.git"
        if not spec.missing:
            repo.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(self.root / "templates" / f"{key}.git", repo)
        if spec.stall:
            with self.lock:
                self._stalled.add((login, spec.name))
        if spec.stall_mid:
            with self.lock:
                self._stalled_mid.add((login, spec.name))
        size = sum(len(d) for d in (DEFAULT_FILES if spec.files is None else spec.files).values())
        size += sum(len(d) for f in (spec.branches or {}).values() for d in f.values())
        pushed = spec.pushed_at or rfc3339(BASE_TIME)
        base, full = f"http://{PLACEHOLDER}", f"{login}/{spec.name}"  # see _api
        return {
            "id": rid, "node_id": f"R_kgDO{rid:08d}", "name": spec.name, "full_name": full,
            "private": False, "owner": {"login": login, "id": _digits(login), "type": "User",
                                        "html_url": f"{base}/{login}"},
            "html_url": f"{base}/{full}", "description": f"{spec.name} repository",
            "fork": spec.fork, "url": f"{base}/repos/{full}", "clone_url": f"{base}/{full}.git",
            "git_url": f"git://{PLACEHOLDER}/{full}.git",
            "ssh_url": f"git@localhost:{full}.git", "default_branch": spec.default_branch,
            "size": spec.size_kb if spec.size_kb is not None
            else 0 if spec.empty else max(1, math.ceil(size / 1024)),
            "pushed_at": pushed, "updated_at": spec.updated_at or pushed,
            "created_at": rfc3339(BASE_TIME - 86400), "archived": False, "disabled": False,
            "visibility": "public",
        }

    # -- switches and counters -------------------------------------------------------------

    def rate_limit(self, requests: int, reset_in_s: float, secondary: bool = False) -> None:
        """The next `requests` API calls made before the reset time answer 403 (primary:
        Remaining 0, Reset) or 429 (secondary: Retry-After); at the reset time it lifts."""
        with self.lock:
            self._limited, self._limit_secondary = requests, secondary
            self._limit_reset = time.time() + reset_in_s

    def fail_5xx(self, requests: int, status: int = 502) -> None:
        with self.lock:
            self._fail, self._fail_status = requests, status

    def set_token_budget(self, token: str, remaining: int, reset_in_s: float) -> None:
        """Requests with this token succeed `remaining` times, then 403 until the reset time,
        when the budget refills to `remaining` for another `reset_in_s`."""
        with self.lock:
            self._budgets[token] = _Budget(remaining, time.time() + reset_in_s, remaining,
                                           reset_in_s)

    def reset_counters(self) -> None:
        with self.lock:
            self.counters.clear()
            self._per_repo.clear()

    def clones(self, login: str, name: str) -> int:
        """Clones (or fetches) of one repository: its `info/refs` requests."""
        with self.lock:
            return self._per_repo[("info_refs", login, name)]

    def upload_packs(self, login: str, name: str) -> int:
        """POST git-upload-pack requests to one repository (protocol v2: 2 per clone)."""
        with self.lock:
            return self._per_repo[("upload_pack", login, name)]

    def _admit(self, auth: str) -> tuple[int, bytes, dict[str, str]]:
        """Rate limits and switches for one API request (lock held): (status, body, headers);
        status 0 means go ahead with these rate-limit headers."""
        now = time.time()
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() in ("token", "bearer") else ""
        budget = self._budgets.get(token)
        if token and budget is None and self.require_known_tokens:
            return 401, b'{"message": "Bad credentials"}', {}
        if self._fail > 0:
            self._fail -= 1
            return self._fail_status, b'{"message": "Server Error"}', {}
        quota = budget or self._core
        quota.refill_if_due(now)
        if budget is not None and budget.told_spent:
            # Sent although an answer had already said this token's quota was spent.
            self.counters["api_after_spent"] += 1
        if self._limited > 0 and now < self._limit_reset:
            self._limited -= 1
            if self._limit_secondary:
                wait = str(max(1, math.ceil(self._limit_reset - now)))
                return 429, b'{"message": "You have exceeded a secondary rate limit."}', {
                    **quota.headers(), "Retry-After": wait}
            return 403, b'{"message": "API rate limit exceeded for user."}', {
                **quota.headers(), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Used": str(quota.full),
                "X-RateLimit-Reset": str(math.ceil(self._limit_reset))}
        if quota.remaining <= 0:
            if budget is not None:
                budget.told_spent = True
                return 403, b'{"message": "API rate limit exceeded for user."}', quota.headers()
            quota.remaining, quota.reset_at = quota.full, now + quota.window_s
        quota.remaining -= 1
        quota.told_spent = quota.remaining == 0
        if budget is None and quota.remaining == 0:
            # Never exhausted, and never said to be: a client that believes the headers (the
            # quota broker) would otherwise wait for a reset an hour away.
            quota.remaining, quota.reset_at = quota.full, now + quota.window_s
        return 0, b"", quota.headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many parallel clones and benchmark clients

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # quiet: a client hanging up mid-answer is not news


class _Handler(BaseHTTPRequestHandler):
    forge: Forge
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.forge.lock:
            self.forge._conns[self.connection] = threading.current_thread()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.forge.lock:
                self.forge._conns.pop(self.connection, None)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        segs = parts.path.split("/")
        if len(segs) == 4 and segs[:2] == ["", "users"] and segs[3] == "repos":
            self._api(segs[2], parse_qs(parts.query))
        elif len(segs) == 5 and segs[3:] == ["info", "refs"]:
            service = parse_qs(parts.query).get("service", [""])[0]
            if service == "git-upload-pack":
                self._git(segs[1], segs[2], parts.path, parts.query, b"")
            else:
                self._send(403, b"only git-upload-pack is served\n", {})
        else:
            if parts.path.startswith("/users/"):
                with self.forge.lock:
                    self.forge.counters.update(("api", "api_404"))
            self._send(404, b'{"message": "Not Found"}', _JSON)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        segs = parts.path.split("/")
        if parts.path in ("/graphql", "/api/graphql"):  # GitHub's, GitHub Enterprise's
            from bulkbackup.testing import forge_graphql  # imports this module: import here

            reply = forge_graphql.answer(self.forge, self.headers, self._body(), self._netloc())
            self._send(reply.status, reply.body, reply.headers)
        elif len(segs) == 4 and segs[3] == "git-upload-pack":
            self._git(segs[1], segs[2], parts.path, parts.query, self._body())
        else:  # receive-pack and anything else: refused without reading the body
            self.close_connection = True
            self._send(403, b"forbidden\n", {"Connection": "close"})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    def _api(self, login: str, query: dict[str, list[str]]) -> None:
        f = self.forge
        auth = self.headers.get("Authorization", "")
        with f.lock:
            f.counters["api"] += 1
            if auth:
                f.auth_headers_seen.append(auth)
            status, body, limits = f._admit(auth)
            if status == 0 and f.api_retry_after is not None:
                status, body = 429, b'{"message": "You have exceeded a secondary rate limit."}'
                limits["Retry-After"] = f.api_retry_after
            elif status == 0 and f.api_reset is not None:
                status, body = 403, b'{"message": "API rate limit exceeded for user."}'
                limits.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f.api_reset})
            repos = f.users.get(login)
            if status == 0 and login in f.renamed:  # as GitHub, for a renamed user
                status, body = 301, b'{"message": "Moved Permanently"}'
                new = f"/users/{f.renamed[login]}/repos?{urlencode(_last(query))}"
                limits["Location"] = f"http://{self._netloc()}{new}"
            elif status == 0 and repos is None:
                status, body = 404, (b'{"message": "Not Found", "documentation_url": '
                                     b'"https://docs.github.com/rest/repos/repos'
                                     b'#list-repositories-for-a-user", "status": "404"}')
            if status:
                f.counters[f"api_{status}" if status < 500 else "api_5xx"] += 1
                self._send(status, body, {**limits, **_JSON})
                return
            repos = list(repos or [])
        per_page, page = _int(query, "per_page", 30, 1, 100), _int(query, "page", 1, 1, 10**9)
        pages = max(1, math.ceil(len(repos) / per_page))
        if f.api_endless:  # pages never end: past the last, the first again
            pages = page + 1
        # Clone URLs name the host the client asked for (as github.com's do), so clients in
        # other network namespaces get addresses they can reach.
        netloc = self._netloc()
        chunk = repos[(page - 1) * per_page : page * per_page]
        if not chunk and f.api_endless:
            chunk = repos[:per_page]
        body = json.dumps(chunk, ensure_ascii=False).replace(PLACEHOLDER, netloc).encode()
        etag = f'W/"{hashlib.sha1(body).hexdigest()}{f.etag_suffix}"'
        headers = {**limits, **_JSON, "ETag": etag, "Cache-Control": "private, max-age=60",
                   "Vary": "Accept, Authorization"}
        if pages > 1:
            extra = {k: v for k, v in _last(query).items() if k != "page"}
            base = f"http://{f.link_host or netloc}/users/{login}/repos"

            def link(p: int, rel: str) -> str:
                return f'<{base}?{urlencode({**extra, "page": p})}>; rel="{rel}"'

            rels = [link(page - 1, "prev"), link(1, "first")] if page > 1 else []
            if page < pages:
                rels = [link(page + 1, "next"), link(pages, "last"), *rels]
            headers["Link"] = ", ".join(rels)
        if f.api_next_loop:
            base = f"http://{netloc}/users/{login}/repos"
            headers["Link"] = f'<{base}?{urlencode(_last(query))}>; rel="next"'
        seen = {t.strip().removeprefix("W/") for t in
                self.headers.get("If-None-Match", "").split(",")}
        with f.lock:
            if etag.removeprefix("W/") in seen or "*" in seen:
                f.counters["api_304"] += 1
                status = 304
            else:
                f.counters["api_200"] += 1
                status = 200
        if status == 200 and (f.api_drip_s > 0 or f.api_pad_mb > 0):
            self._send_hostile(body, headers)
        else:
            self._send(status, body, headers)

    def _send_hostile(self, body: bytes, headers: dict[str, str]) -> None:
        """A 200 whose body is dripped (api_drip_s; with api_drip_head the status line and
        headers too) or padded (api_pad_mb of spaces inside the array, streamed)."""
        f = self.forge
        pad = 0 if f.api_drip_s > 0 else f.api_pad_mb << 20
        size = (["Connection: close"] if f.api_pad_unsized
                else [f"Content-Length: {len(body) + pad}"])  # unsized: the body ends at EOF
        lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in headers.items()), *size]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if f.api_drip_s > 0:
            slow = head + body if f.api_drip_head else body
            self.wfile.write(b"" if f.api_drip_head else head)
            for i in range(len(slow)):
                if f._stopping.wait(f.api_drip_s):
                    break
                self.wfile.write(slow[i : i + 1])
            self.close_connection = True
            return
        self.wfile.write(head + body[:1])  # "[": the padding is whitespace inside the array
        spaces = b" " * (1 << 16)
        while pad > 0:
            self.wfile.write(spaces[:pad])
            pad -= len(spaces)
        self.wfile.write(body[1:])
        self.close_connection = f.api_pad_unsized

    def _netloc(self) -> str:
        return self.headers.get("Host") or urlsplit(self.forge.url).netloc

    def _git(self, login: str, repo: str, path: str, query: str, body: bytes) -> None:
        f = self.forge
        name = repo.removesuffix(".git")
        kind = "upload_pack" if path.endswith("/git-upload-pack") else "info_refs"
        auth = self.headers.get("Authorization")
        with f.lock:
            f.counters[kind] += 1
            f._per_repo[(kind, login, name)] += 1
            if auth:
                f.auth_headers_seen.append(auth)
            stall = (login, name) in f._stalled
            stall_mid = (login, name) in f._stalled_mid
            redirect = f.git_redirect
        if redirect and kind == "info_refs":
            self._send(302, b"", {"Location": f"{redirect}{path}?{query}"})
            return
        ok = all(_NAME.fullmatch(s) and ".." not in s for s in (login, repo))
        if not ok or not repo.endswith(".git") or not (f.git_root / login / repo).is_dir():
            self._send(404, b"Repository not found.\n", {"Content-Type": "text/plain"})
            return
        if stall and kind == "upload_pack" and f._stopping.wait(f.stall_s):
            self.close_connection = True
            return
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(f.git_root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
               "QUERY_STRING": query, "REMOTE_ADDR": self.client_address[0],
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "HOME": str(f.root)}
        for header, var in (("Git-Protocol", "GIT_PROTOCOL"),
                            ("Content-Encoding", "HTTP_CONTENT_ENCODING")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(["git", "http-backend"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, env=env)
            with f.lock:
                f._procs.add(proc)
            try:
                self._relay(proc, body, err, stall_mid and _wants(body, self.headers))
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                with f.lock:
                    f._procs.discard(proc)

    def _relay(self, proc: subprocess.Popen[bytes], body: bytes, err: Any,
               stall_mid: bool = False) -> None:
        """Feed the request to the CGI, then stream its answer (chunked unless it is sized);
        ``stall_mid``: send the answer's first bytes, then stall (until stop)."""
        assert proc.stdin is not None and proc.stdout is not None
        threading.Thread(target=_feed, args=(proc.stdin, body), daemon=True).start()
        status, headers = 200, {}
        while (line := proc.stdout.readline()) not in (b"\r\n", b"\n"):
            if not line:  # no CGI header block: the backend failed
                proc.wait()
                err.seek(0)
                self._send(500, err.read() or b"git http-backend failed\n", {})
                return
            key, _, value = line.decode("latin-1").partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            else:
                headers[key.strip()] = value.strip()
        sized = "Content-Length" in headers
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if not sized:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        out = cast(io.BufferedReader, proc.stdout)
        while data := out.read1(1 << 16):
            if stall_mid:
                data = data[:64]
            self.wfile.write(data if sized else b"%x\r\n%s\r\n" % (len(data), data))
            if stall_mid:
                self.wfile.flush()
                self.forge._stopping.wait(self.forge.stall_s)
                self.close_connection = True
                return
        if proc.wait() != 0:
            self.close_connection = True  # no last chunk: the client sees a broken answer
        elif not sized:
            self.wfile.write(b"0\r\n\r\n")


def _wants(body: bytes, headers: Any) -> bool:
    """Does this upload-pack request ask for objects (a fetch, not a ref listing)?"""
    if headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
        with contextlib.suppress(OSError, EOFError):
            body = gzip.decompress(body)
    return b"want " in body


def _feed(pipe: Any, body: bytes) -> None:
    try:
        pipe.write(body)
        pipe.close()
    except OSError:
        pass  # the backend exited early


def _digits(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:7], 16)


def _last(query: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in query.items()}


def _int(query: dict[str, list[str]], key: str, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(int(query.get(key, [str(default)])[-1]), high))
    except ValueError:
        return default


def make_users(forge: Forge, n_users: int, repos_per_user: int, prefix: str = "user",
               spec: RepoSpec | None = None) -> list[str]:
    """Synthetic users `<prefix>0000...`, each with `repos_per_user` repositories `repo<j>`
    (copies of `spec`, default content when None), built in one parallel batch."""
    logins = [f"{prefix}{i:04d}" for i in range(n_users)]
    base = spec or RepoSpec("repo")
    forge.add_users({login: [RepoSpec(**{**vars(base), "name": f"repo{j}"})
                             for j in range(repos_per_user)] for login in logins})
    return logins


def sample(forge: Forge) -> None:
    """Demo users: `octocat` (branches, tags, an empty repository, a fork, a missing one),
    `torvalds-demo` (two pages at per_page=5). `ghost-user` does not exist."""
    forge.add_user("octocat", [
        RepoSpec("Hello-World", branches={"dev": {"dev.txt": b"work in progress\n"}},
                 tags=["v1.0", "v1.1"]),
        RepoSpec("Spoon-Knife", files={"index.html": b"<h1>Spoon</h1>\n"}),
        RepoSpec("empty-repo", empty=True),
        RepoSpec("linguist", fork=True),
        RepoSpec("gone", missing=True),
    ])
    forge.add_user("torvalds-demo", [RepoSpec(f"project-{i}") for i in range(7)])


def main() -> None:
    ap = argparse.ArgumentParser(description="A local GitHub stand-in.")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sample", action="store_true", help="serve the sample users")
    ap.add_argument("--users", type=int, default=0, help="synthetic users user0000...")
    ap.add_argument("--repos", type=int, default=1, help="repositories per synthetic user")
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    forge = Forge(args.root, args.host, args.port).start()
    try:
        if args.sample:
            sample(forge)
        if args.users:
            make_users(forge, args.users, args.repos)
        print(forge.url, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        forge.stop()


if __name__ == "__main__":
    main()
