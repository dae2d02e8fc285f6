"""The stand-in's HTTP side: the REST listing (its hostile modes: forge_hostile.py), the GraphQL
hook, releases (forge_releases.py), and git's smart HTTP through `git http-backend` (its
answers' body bytes are counted in
`forge.counters["git_bytes_sent"]`, those to shallow fetches (`deepen`: a zip's tree) also in
"git_bytes_sent_shallow", ref listings (`info/refs`, v2 `ls-refs`) also in
"git_bytes_sent_refs", for the benchmarks of what a sync fetches). Protocol v2 as GitHub
serves it (the client's `Git-Protocol` header reaches the backend) unless `forge.git_v2` is
off: then every client gets protocol v0."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit

from bulkbackup.testing import forge_gists, forge_graphql, forge_hostile, forge_releases, lfs
from bulkbackup.testing.forge_quota import token_of
from bulkbackup.testing.forge_state import ForgeState
from bulkbackup.testing.hostile_packs import PackAnswer, answer_with, wants_and_haves
from bulkbackup.testing.oauth import OAuthApps
from bulkbackup.testing.repos import NAME, PLACEHOLDER

_JSON = {"Content-Type": "application/json; charset=utf-8"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many parallel clones and benchmark clients

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # quiet: a client hanging up mid-answer is not news


class _Handler(BaseHTTPRequestHandler):
    forge: ForgeState  # set by Forge.start on a subclass
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
        if OAuthApps.handles(parts.path):
            self._oauth(parts.path, parts.query, b"")
        elif len(segs) == 4 and segs[:2] == ["", "users"] and segs[3] == "repos":
            self._api(segs[2], parse_qs(parts.query))
        elif len(segs) == 4 and segs[:2] == ["", "users"] and segs[3] == "gists":
            self._send(*forge_gists.rest_answer(self.forge, segs[2], self.headers,
                                                self._netloc()))
        elif parts.path == "/rate_limit":
            self._rate_limit()
        elif len(segs) == 3 and segs[:2] == ["", "users"] and segs[2]:
            self._user(segs[2])
        elif parts.path.startswith(lfs.DOWNLOAD_PATH):
            self._lfs_object(parts.path)
        elif forge_releases.handles(segs):
            self._send(*forge_releases.answer(self.forge, segs, parse_qs(parts.query),
                                              self.headers, self._netloc()))
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
        if OAuthApps.handles(parts.path):
            self._oauth(parts.path, parts.query, self._body())
        elif parts.path in ("/graphql", "/api/graphql"):  # GitHub's, GitHub Enterprise's
            reply = forge_graphql.answer(self.forge, self.headers, self._body(), self._netloc())
            self._send(reply.status, reply.body, reply.headers)
        elif len(segs) == 4 and segs[3] == "git-upload-pack":
            self._git(segs[1], segs[2], parts.path, parts.query, self._body())
        elif len(segs) == 7 and segs[3:] == ["info", "lfs", "objects", "batch"]:
            self._lfs_batch(self._body())
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

    def _oauth(self, path: str, query: str, body: bytes) -> None:
        """Sign in with GitHub's endpoints (oauth.py)."""
        with self.forge.lock:
            users = list(self.forge.users)
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.forge.oauth.answer(self.command, path, query, headers, body, users)
        self._send(reply.status, reply.body, reply.headers)

    def _rate_limit(self) -> None:
        """GitHub's `GET /rate_limit`: free (nothing charged, never rate limited); 401 for a
        token `require_known_tokens` refuses, as the listing does."""
        f = self.forge
        token = token_of(self.headers.get("Authorization", ""))
        with f.lock:
            f.counters["rate_limit"] += 1
            if f.refuses(token):
                f.counters["rate_limit_401"] += 1
                self._send(401, b'{"message": "Bad credentials"}', _JSON)
                return
            limits = f.rest_window(token, time.time()).headers()
        core = {"limit": int(limits["X-RateLimit-Limit"]),
                "remaining": int(limits["X-RateLimit-Remaining"]),
                "reset": int(limits["X-RateLimit-Reset"])}
        body = json.dumps({"resources": {"core": core}, "rate": core}).encode()
        self._send(200, body, {**limits, **_JSON})

    def _user(self, login: str) -> None:
        """`GET /users/<login>`: the user as GitHub spells it (logins ignore case), or 404."""
        with self.forge.lock:
            self.forge.counters["api"] += 1
            self.forge.counters["api_user"] += 1
            self.forge.per_owner[login] += 1
            spelled = next((u for u in self.forge.users if u.lower() == login.lower()), None)
        if spelled is None:
            self._send(404, b'{"message": "Not Found", "status": "404"}', _JSON)
            return
        body = json.dumps({"login": spelled, "id": 1000 + len(spelled), "type": "User"})
        self._send(200, body.encode(), _JSON)

    def _api(self, login: str, query: dict[str, list[str]]) -> None:
        f = self.forge
        auth = self.headers.get("Authorization", "")
        with f.lock:
            f.counters["api"] += 1
            f.per_owner[login] += 1
            if auth:
                f.auth_headers_seen.append(auth)
            status, body, limits = f.admit(auth)
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
        forge_hostile.send(self.forge, self.wfile, body, headers)
        self.close_connection = True if self.forge.api_drip_s > 0 else \
            self.forge.api_pad_unsized

    def _lfs_batch(self, body: bytes) -> None:
        with self.forge.lock:
            self.forge.counters["lfs_batch"] += 1
            objects = dict(self.forge.lfs_objects)
        self._send(*lfs.batch_answer(objects, body, self._netloc()))

    def _lfs_object(self, path: str) -> None:
        oid = path[len(lfs.DOWNLOAD_PATH):]
        with self.forge.lock:
            self.forge.counters["lfs_download"] += 1
            self.forge.lfs_seen.append((self._netloc(), oid, self.headers.get("Authorization")))
            obj = self.forge.lfs_objects.get(oid)
        self._send(*lfs.object_answer(obj, self._netloc(), path))

    def _netloc(self) -> str:
        return self.headers.get("Host") or urlsplit(self.forge.url).netloc

    def _git(self, login: str, repo: str, path: str, query: str, body: bytes) -> None:
        f = self.forge
        name = repo.removesuffix(".git")
        kind = "upload_pack" if path.endswith("/git-upload-pack") else "info_refs"
        auth = self.headers.get("Authorization")
        fetch = kind == "upload_pack" and _says(body, self.headers, b"want ")
        listing = kind == "info_refs" or _says(body, self.headers, b"command=ls-refs")
        with f.lock:
            f.counters[kind] += 1
            f._per_repo[(kind, login, name)] += 1
            if fetch:
                f._per_repo[("fetch", login, name)] += 1
            if auth:
                f.auth_headers_seen.append(auth)
            stall = (login, name) in f._stalled
            stall_mid = (login, name) in f._stalled_mid
            redirect = f.git_redirect
            v2 = f.git_v2
            crafted = f._pack_answers.get((login, name))
        if redirect and kind == "info_refs":
            self._send(302, b"", {"Location": f"{redirect}{path}?{query}"})
            return
        ok = all(NAME.fullmatch(s) and ".." not in s for s in (login, repo))
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
            if self.headers.get(header) and (v2 or var != "GIT_PROTOCOL"):
                env[var] = self.headers[header]
        if (crafted is not None and kind == "upload_pack" and _says(body, self.headers, b"want ")
                and not _says(body, self.headers, b"deepen ")):
            self._crafted(crafted, f.git_root / login / repo, body, env)
            return
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(["git", "http-backend"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, env=env)
            with f.lock:
                f._procs.add(proc)
            try:
                counts = ("git_bytes_sent",
                          *(("git_bytes_sent_shallow",) if _says(body, self.headers, b"deepen ")
                            else ()), *(("git_bytes_sent_refs",) if listing else ()))
                self._relay(proc, body, err, stall_mid and fetch, counts)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                with f.lock:
                    f._procs.discard(proc)

    def _crafted(self, answer: PackAnswer, repo: Path, body: bytes, env: dict[str, str]
                 ) -> None:
        """git's own reply to an increment fetch, with the pack ``answer`` makes in place
        of git's (forge.set_pack_answer)."""
        if self.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
            env = {k: v for k, v in env.items() if k != "HTTP_CONTENT_ENCODING"}
        env["CONTENT_LENGTH"] = str(len(body))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                             timeout=60).stdout
        head, _, reply = out.partition(b"\r\n\r\n")
        headers = dict(line.decode("latin-1").split(": ", 1) for line in head.splitlines()
                       if b": " in line and not line.lower().startswith(b"status"))
        headers.pop("Content-Length", None)
        wants, haves = wants_and_haves(body)
        self._send(200, answer_with(reply, answer(repo, wants, haves)), headers)

    def _relay(self, proc: subprocess.Popen[bytes], body: bytes, err: Any,
               stall_mid: bool = False, counts: tuple[str, ...] = ()) -> None:
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
            with self.forge.lock:  # the answer's body as git sent it, without chunk framing
                self.forge.counters.update(dict.fromkeys(counts, len(data)))
            if stall_mid:
                self.wfile.flush()
                self.forge._stopping.wait(self.forge.stall_s)
                self.close_connection = True
                return
        if proc.wait() != 0:
            self.close_connection = True  # no last chunk: the client sees a broken answer
        elif not sized:
            self.wfile.write(b"0\r\n\r\n")


def _says(body: bytes, headers: Any, word: bytes) -> bool:
    """Does this upload-pack request hold ``word`` (b"want ": a fetch, not a ref listing;
    b"deepen ": a shallow fetch; b"command=ls-refs": a v2 ref listing)?"""
    if headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
        with contextlib.suppress(OSError, EOFError):
            body = gzip.decompress(body)
    return word in body


def _feed(pipe: Any, body: bytes) -> None:
    try:
        pipe.write(body)
        pipe.close()
    except OSError:
        pass  # the backend exited early


def _last(query: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in query.items()}


def _int(query: dict[str, list[str]], key: str, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(int(query.get(key, [str(default)])[-1]), high))
    except ValueError:
        return default
