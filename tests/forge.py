"""A local GitHub stand-in for tests, benchmarks and the demo.

It serves `GET /users/<login>/repos` in GitHub's JSON shape (Link pagination, ETag and 304,
X-RateLimit-* headers, 404 for unknown users, switches for rate limits and 5xx answers) and
the repositories it builds (with `git fast-import`) over git's smart HTTP protocol through
`git http-backend`. It counts what it serves so tests can assert what was fetched.

    python -m tests.forge --root DIR [--port PORT] [--sample] [--users N --repos M]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
DEFAULT_FILES: dict[str, bytes] = {
    "README.md": b"# Hello\n\nA repository of the GitHub stand-in.\n",
    "src/main.py": b"print('hello')\n",
    "docs/naïve-ß.txt": "non-ASCII name: naïve\n".encode(),
    "bin/blob.dat": bytes(range(256)) * 4,
}


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RepoSpec:
    name: str
    files: dict[str, bytes] | None = None
    branches: dict[str, dict[str, bytes]] | None = None
    tags: list[str] = field(default_factory=list)
    empty: bool = False
    missing: bool = False
    fork: bool = False
    size_kb: int | None = None
    default_branch: str = "main"
    pushed_at: str | None = None
    updated_at: str | None = None
    stall: bool = False


def _fast_import_stream(spec: RepoSpec) -> bytes:
    """Commits for the default branch, extra branches and both kinds of tags."""
    out: list[bytes] = []
    when = BASE_TIME

    def commit(ref: str, mark: int, files: dict[str, bytes], parent: int | None) -> None:
        msg = f"commit {mark} on {ref}\n".encode()
        out.append(f"commit {ref}\nmark :{mark}\n".encode())
        who = f"A U Thor <author@example.com> {when + mark} +0000\n".encode()
        out.append(b"author " + who + b"committer " + who)
        out.append(b"data %d\n%s" % (len(msg), msg))
        if parent is not None:
            out.append(f"from :{parent}\n".encode())
        for path, data in files.items():
            out.append(b"M 100644 inline " + _quote(path) + b"\n")
            out.append(b"data %d\n%s\n" % (len(data), data))
        out.append(b"\n")

    base = spec.files if spec.files is not None else DEFAULT_FILES
    commit(f"refs/heads/{spec.default_branch}", 1, base, None)
    mark = 1
    for branch, files in (spec.branches or {}).items():
        mark += 1
        commit(f"refs/heads/{branch}", mark, files, 1)
    for tag in spec.tags:
        out.append(f"reset refs/tags/{tag}-light\nfrom :1\n\n".encode())
        msg = f"release {tag}\n".encode()
        out.append(f"tag {tag}\nfrom :1\n".encode())
        out.append(f"tagger A U Thor <author@example.com> {when} +0000\n".encode())
        out.append(b"data %d\n%s\n" % (len(msg), msg))
    return b"".join(out)


def _quote(path: str) -> bytes:
    raw = path.encode()
    if any(c in raw for c in b'"\\\n') or raw.startswith(b'"'):
        escaped = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
        return b'"' + escaped + b'"'
    return raw


def _git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, input=data, check=True, capture_output=True)


class Forge:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.git_root = self.root / "git"
        self.git_root.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.url = ""
        self.lock = threading.Lock()
        self.users: dict[str, list[dict[str, Any]]] = {}
        self.counters: Counter[str] = Counter()
        self._clones: Counter[tuple[str, str]] = Counter()
        self.auth_headers_seen: list[str] = []
        self.stall_s = 30.0
        self._stalled: set[tuple[str, str]] = set()
        self._limited = 0
        self._limit_reset = 0.0
        self._limit_secondary = False
        self._fail = 0
        self._fail_status = 502
        self._budgets: dict[str, list[float]] = {}  # token -> [remaining, reset_at, full]
        self.require_known_tokens = False
        self.renamed: dict[str, str] = {}  # old login -> new login: the API answers 301
        self.link_host: str | None = None  # set: pagination links name this host instead
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._template: Path | None = None
        self._next_id = 1000

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Forge:
        forge = self

        class Handler(_Handler):
            pass

        Handler.forge = forge
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Forge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content ---------------------------------------------------------------------------

    def add_user(self, login: str, repos: Iterable[RepoSpec]) -> None:
        specs = list(repos)
        with ThreadPoolExecutor(4) as pool:
            entries = list(pool.map(lambda s: self._build(login, s), specs))
        with self.lock:
            self.users.setdefault(login, []).extend(entries)

    def add_raw_repo_entry(self, login: str, entry: dict[str, Any]) -> None:
        with self.lock:
            self.users.setdefault(login, []).append(dict(entry))

    def remove_user(self, login: str) -> None:
        with self.lock:
            self.users.pop(login, None)

    def push(self, login: str, name: str, files: dict[str, bytes]) -> None:
        """A new commit on the default branch; pushed_at/updated_at move strictly later."""
        with self.lock:
            entry = next(e for e in self.users[login] if e["name"] == name)
        repo = self.git_root / login / f"{name}.git"
        branch = entry["default_branch"]
        stream = [f"commit refs/heads/{branch}\n".encode(),
                  f"author A U Thor <a@example.com> {int(time.time())} +0000\n".encode(),
                  f"committer A U Thor <a@example.com> {int(time.time())} +0000\n".encode(),
                  b"data 5\npush\n", f"from refs/heads/{branch}^0\n".encode()]
        for path, data in files.items():
            stream += [b"M 100644 inline " + _quote(path) + b"\n",
                       b"data %d\n%s\n" % (len(data), data)]
        _git("fast-import", "--quiet", cwd=repo, data=b"".join(stream) + b"\n")
        with self.lock:
            later = max(time.time(), _epoch(entry["pushed_at"]) + 1)
            entry["pushed_at"] = entry["updated_at"] = rfc3339(later)

    def _build(self, login: str, spec: RepoSpec) -> dict[str, Any]:
        with self.lock:
            self._next_id += 1
            rid = self._next_id
        repo = self.git_root / login / f"{spec.name}.git"
        if spec.stall:
            self._stalled.add((login, spec.name))
        if not spec.missing:
            repo.parent.mkdir(parents=True, exist_ok=True)
            simple = spec.files is None and not spec.branches and not spec.tags and not spec.empty
            if simple and spec.default_branch == "main":
                shutil.copytree(self._default_template(), repo)
            else:
                _git("init", "--bare", "--quiet", str(repo))
                if not spec.empty:
                    _git("fast-import", "--quiet", cwd=repo, data=_fast_import_stream(spec))
                _git("symbolic-ref", "HEAD", f"refs/heads/{spec.default_branch}", cwd=repo)
        pushed = spec.pushed_at or rfc3339(BASE_TIME)
        base = "http://forge.invalid"  # replaced by the requested host when served
        return {
            "id": rid, "node_id": f"R_{rid}", "name": spec.name,
            "full_name": f"{login}/{spec.name}", "private": False,
            "owner": {"login": login, "id": abs(hash(login)) % 10**8, "type": "User"},
            "html_url": f"{base}/{login}/{spec.name}", "description": f"{spec.name} repository",
            "fork": spec.fork, "url": f"{base}/repos/{login}/{spec.name}",
            "clone_url": f"{base}/{login}/{spec.name}.git",
            "git_url": f"git://forge.invalid/{login}/{spec.name}.git",
            "ssh_url": f"git@forge.invalid:{login}/{spec.name}.git",
            "default_branch": spec.default_branch,
            "size": spec.size_kb if spec.size_kb is not None else (0 if spec.empty else 2),
            "pushed_at": pushed, "updated_at": spec.updated_at or pushed,
            "created_at": rfc3339(BASE_TIME - 86400), "archived": False, "disabled": False,
            "visibility": "public",
        }

    def _default_template(self) -> Path:
        with self.lock:
            if self._template is None:
                t = self.root / "template.git"
                _git("init", "--bare", "--quiet", str(t))
                _git("fast-import", "--quiet", cwd=t, data=_fast_import_stream(RepoSpec("t")))
                _git("symbolic-ref", "HEAD", "refs/heads/main", cwd=t)
                self._template = t
            return self._template

    # -- switches and counters -------------------------------------------------------------

    def rate_limit(self, requests: int, reset_in_s: float, secondary: bool = False) -> None:
        with self.lock:
            self._limited = requests
            self._limit_reset = time.time() + reset_in_s
            self._limit_secondary = secondary

    def fail_5xx(self, requests: int, status: int = 502) -> None:
        with self.lock:
            self._fail, self._fail_status = requests, status

    def set_token_budget(self, token: str, remaining: int, reset_in_s: float) -> None:
        with self.lock:
            self._budgets[token] = [remaining, time.time() + reset_in_s, remaining]

    def reset_counters(self) -> None:
        with self.lock:
            self.counters.clear()
            self._clones.clear()

    def clones(self, login: str, name: str) -> int:
        """Clones (or fetches) of one repository: its `info/refs` requests."""
        with self.lock:
            return self._clones[(login, name)]

    def stalls(self, login: str, name: str) -> bool:
        return (login, name) in self._stalled


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class _Handler(BaseHTTPRequestHandler):
    forge: Forge
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        segs = parts.path.strip("/").split("/")
        if len(segs) == 3 and segs[0] == "users" and segs[2] == "repos":
            self._api(segs[1], parse_qs(parts.query))
        elif parts.path.endswith("/info/refs"):
            self._git(parts.path, parts.query, b"")
        else:
            self._send(404, b'{"message": "Not Found"}', {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self._body()
        if parts.path.endswith("/git-upload-pack"):
            self._git(parts.path, parts.query, body)
        else:
            self._send(403, b"forbidden\n", {"Content-Type": "text/plain"})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _api(self, login: str, query: dict[str, list[str]]) -> None:
        f = self.forge
        auth = self.headers.get("Authorization", "")
        token = auth.split(" ", 1)[1] if " " in auth else ""
        now = time.time()
        with f.lock:
            f.counters["api"] += 1
            if auth:
                f.auth_headers_seen.append(auth)
            limit_headers = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4999",
                             "X-RateLimit-Reset": str(int(now) + 3600),
                             "X-RateLimit-Used": "1", "X-RateLimit-Resource": "core"}
            if f._fail > 0:
                f._fail -= 1
                f.counters["api_5xx"] += 1
                status = f._fail_status
                self._send(status, b'{"message": "Server Error"}',
                           {"Content-Type": "application/json"})
                return
            limited = f._limited > 0 and now < f._limit_reset
            budget = f._budgets.get(token)
            if budget is not None:
                if now >= budget[1]:
                    budget[0], budget[1] = budget[2], now + 3600
                limited = limited or budget[0] <= 0
                if budget[0] > 0:
                    budget[0] -= 1
                limit_headers["X-RateLimit-Remaining"] = str(int(max(budget[0], 0)))
                limit_headers["X-RateLimit-Reset"] = str(math.ceil(budget[1]))
            elif token and f.require_known_tokens:
                self._send(401, b'{"message": "Bad credentials"}', {})
                return
            if limited:
                if f._limited > 0 and now < f._limit_reset:
                    f._limited -= 1
                    reset = f._limit_reset
                else:
                    reset = budget[1] if budget else now + 60
                if f._limit_secondary and budget is None:
                    f.counters["api_429"] += 1
                    self._send(429, b'{"message": "You have exceeded a secondary rate limit."}',
                               {"Retry-After": str(math.ceil(reset - now)),
                                "Content-Type": "application/json"})
                    return
                f.counters["api_403"] += 1
                limit_headers.update({"X-RateLimit-Remaining": "0",
                                      "X-RateLimit-Reset": str(math.ceil(reset))})
                self._send(403, b'{"message": "API rate limit exceeded for user."}',
                           {**limit_headers, "Content-Type": "application/json"})
                return
            if login in f.renamed:
                f.counters["api_301"] += 1
                self._send(301, b"", {"Location": f"/users/{f.renamed[login]}/repos?"
                                      + urlencode({k: v[0] for k, v in query.items()})})
                return
            repos = f.users.get(login)
            if repos is None:
                f.counters["api_404"] += 1
                self._send(404, b'{"message": "Not Found", "documentation_url": '
                                b'"https://docs.github.com/rest"}',
                           {**limit_headers, "Content-Type": "application/json"})
                return
            repos = [dict(r) for r in repos]
        per_page = max(1, min(int((query.get("per_page") or ["30"])[0]), 100))
        page = max(1, int((query.get("page") or ["1"])[0]))
        pages = max(1, math.ceil(len(repos) / per_page))
        # Clone URLs name the host the client asked for (as github.com's do), so clients in
        # other network namespaces get addresses they can reach.
        here = f"http://{self.headers.get('Host') or urlsplit(f.url).netloc}"
        for r in repos:
            for k in ("clone_url", "html_url", "url"):
                if isinstance(r.get(k), str):
                    r[k] = r[k].replace("http://forge.invalid", here)
        body = json.dumps(repos[(page - 1) * per_page : page * per_page]).encode()
        etag = 'W/"' + hashlib.sha1(body).hexdigest() + '"'
        headers = {**limit_headers, "ETag": etag, "Content-Type": "application/json"}
        if pages > 1:
            base = f"http://{f.link_host}" if f.link_host else here
            base += f"/users/{login}/repos"
            extra = {k: v[0] for k, v in query.items() if k != "page"}

            def link(p: int, rel: str) -> str:
                return f'<{base}?{urlencode({**extra, "page": p})}>; rel="{rel}"'

            rels = []
            if page < pages:
                rels += [link(page + 1, "next"), link(pages, "last")]
            if page > 1:
                rels += [link(page - 1, "prev"), link(1, "first")]
            headers["Link"] = ", ".join(rels)
        if self.headers.get("If-None-Match") == etag:
            with f.lock:
                f.counters["api_304"] += 1
            self._send(304, b"", {k: v for k, v in headers.items() if k != "Content-Type"})
            return
        with f.lock:
            f.counters["api_200"] += 1
        self._send(200, body, headers)

    def _git(self, path: str, query: str, body: bytes) -> None:
        f = self.forge
        segs = path.strip("/").split("/")
        login, name = segs[0], segs[1].removesuffix(".git") if len(segs) > 1 else ""
        auth = self.headers.get("Authorization")
        with f.lock:
            if auth:
                f.auth_headers_seen.append(auth)
            if path.endswith("/git-upload-pack"):
                f.counters["upload_pack"] += 1  # protocol v2: ls-refs and fetch, 2 a clone
            else:
                f.counters["info_refs"] += 1
                f._clones[(login, name)] += 1
        if path.endswith("/git-upload-pack") and f.stalls(login, name):
            time.sleep(f.stall_s)
        env = {
            "PATH": "/usr/bin:/bin:/usr/local/bin", "GIT_PROJECT_ROOT": str(f.git_root),
            "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
            "QUERY_STRING": query, "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        if proc.returncode != 0 and not sep:
            status, payload, headers = 500, proc.stderr, {}
        self._send(status, payload, headers)


def make_users(forge: Forge, n_users: int, repos_per_user: int, prefix: str = "user") -> list[str]:
    """Synthetic users `<prefix>0000...` with small identical repositories (for benchmarks)."""
    logins = [f"{prefix}{i:05d}" for i in range(n_users)]
    for login in logins:
        forge.add_user(login, [RepoSpec(f"repo{j}") for j in range(repos_per_user)])
    return logins


def sample(forge: Forge) -> None:
    forge.add_user("octocat", [
        RepoSpec("Hello-World", branches={"dev": {"dev.txt": b"work in progress\n"}},
                 tags=["v1.0"]),
        RepoSpec("Spoon-Knife", files={"index.html": b"<h1>Spoon</h1>\n"}),
        RepoSpec("empty-repo", empty=True),
        RepoSpec("linguist", fork=True),
    ])
    forge.add_user("torvalds-demo", [RepoSpec(f"project-{i}") for i in range(5)])


def main() -> None:
    ap = argparse.ArgumentParser(description="A local GitHub stand-in.")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sample", action="store_true", help="serve sample users")
    ap.add_argument("--users", type=int, default=0, help="synthetic users user00000...")
    ap.add_argument("--repos", type=int, default=1, help="repositories per synthetic user")
    args = ap.parse_args()
    forge = Forge(args.root, args.host, args.port).start()
    if args.sample:
        sample(forge)
    if args.users:
        make_users(forge, args.users, args.repos)
    print(forge.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    forge.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
