"""A local GitHub stand-in for tests, benchmarks and the demo.

It serves `GET /users/<login>/repos` in GitHub's JSON shape (Link pagination, weak ETags and
304, X-RateLimit-* headers, 404 for unknown users, switches for rate limits, token budgets and
5xx answers) and the bare repositories it builds with `git fast-import` over git's smart HTTP
protocol through `git http-backend` (read-only). It counts what it serves so tests can assert
what was fetched. Also `POST /graphql` (forge_graphql.py). This module builds the content and
serves it; the state the handlers see (switches, counters, rate limits) is in forge_state.py,
the repositories' content in repos.py, the HTTP side in forge_http.py, changes to built
repositories in forge_changes.py. Imports run one way: forge -> forge_http -> forge_graphql
-> forge_graphql_data -> forge_state -> forge_graphql_controls -> forge_quota.

    python -m bulkbackup.testing.forge --root DIR [--port PORT] [--sample] [--users N --repos M]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bulkbackup.testing import forge_gists
from bulkbackup.testing.forge_changes import ForgeChanges
from bulkbackup.testing.forge_http import _Handler, _Server
from bulkbackup.testing.forge_state import ForgeState
from bulkbackup.testing.repos import (
    BASE_TIME,
    DEFAULT_FILES,
    NAME,
    PLACEHOLDER,
    RepoSpec,
    commit,
    digits,
    epoch,
    fast_import_stream,
    git,
    rfc3339,
)

__all__ = ["BASE_TIME", "DEFAULT_FILES", "Forge", "RepoSpec", "make_users", "rfc3339", "sample"]


class Forge(ForgeState, ForgeChanges):
    """The stand-in: `start()` (or `with`) serves it on `url`, `stop()` ends it.

    Content: add_user/add_users (built repositories), add_raw_repo_entry, push, remove_user;
    changes to a built repository (force_push, add_branch, ...) in forge_changes.py.
    Switches and counters (rate_limit, fail_5xx, set_token_budget, `require_known_tokens`,
    RepoSpec.stall with `stall_s`, `git_v2`, `counters`, clones(), ...; the GraphQL side's in
    `graphql`): see ForgeState (forge_state.py). All of it is guarded by `lock`.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(root)
        self.git_root.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.build_workers = max(4, os.cpu_count() or 1)
        self._next_id = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

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
            stream = fast_import_stream(spec)
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
        """A new commit on the default branch; pushed_at/updated_at move strictly later.
        With `event_log` set, recorded as the PushEvent GitHub would publish."""
        with self.lock:
            entry = next(e for e in self.users[login] if e.get("name") == name)
            branch = entry["default_branch"]
        repo = self.git_root / login / f"{name}.git"
        if not repo.is_dir():
            raise FileNotFoundError(repo)
        has_tip = subprocess.run(["git", "rev-parse", "-q", "--verify", f"refs/heads/{branch}"],
                                 cwd=repo, capture_output=True, check=False).returncode == 0
        parent = f"refs/heads/{branch}^0" if has_tip else None
        stream = commit(f"refs/heads/{branch}", int(time.time()), files, parent, "push")
        git("fast-import", "--quiet", cwd=repo, data=stream)
        with self.lock:
            later = max(time.time(), epoch(entry["pushed_at"]) + 1,
                        epoch(entry["updated_at"]) + 1)
            entry["pushed_at"] = entry["updated_at"] = rfc3339(later)
        self._event("PushEvent", login, name, ref=f"refs/heads/{branch}", size=1)

    def add_gist(self, login: str, gist_id: str, files: dict[str, bytes],
                 build: bool = True) -> dict[str, Any]:
        """A public gist of ``login`` (forge_gists.py; not built: its clone fails)."""
        return forge_gists.add(self, login, gist_id, files, build)

    def push_gist(self, login: str, gist_id: str, files: dict[str, bytes]) -> None:
        """A new revision of the gist; its times move strictly later."""
        forge_gists.push(self, login, gist_id, files)

    def _template(self, key: str, stream: bytes, branch: str) -> Path:
        """One bare repository per distinct content, copied for every repo that has it."""
        path = self.root / "templates" / f"{key}.git"
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix="tmp-"))
            git("init", "--bare", "--quiet", "--template=", f"--initial-branch={branch}", str(tmp))
            if stream:
                git("fast-import", "--quiet", cwd=tmp, data=stream)
            try:
                tmp.rename(path)
            except OSError:  # built concurrently by another Forge on the same root
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _build(self, job: tuple[str, RepoSpec], key: str, rid: int) -> dict[str, Any]:
        login, spec = job
        if not NAME.fullmatch(login) or not NAME.fullmatch(spec.name) or ".." in spec.name:
            raise ValueError(f"unsafe name {login}/{spec.name}")
        repo = self.git_root / login / f"{spec.name}.git"
        if not spec.missing:
            repo.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(self.root / "templates" / f"{key}.git", repo)
        if spec.wiki is not None:
            self._wiki(login, spec.name, spec.wiki)
        if spec.lfs:
            with self.lock:
                self.lfs_objects.update({o.oid: o for o in spec.lfs.values()})
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
            "private": False, "owner": {"login": login, "id": digits(login), "type": "User",
                                        "html_url": f"{base}/{login}"},
            "html_url": f"{base}/{full}", "description": f"{spec.name} repository",
            "fork": spec.fork, "url": f"{base}/repos/{full}", "clone_url": f"{base}/{full}.git",
            "git_url": f"git://{PLACEHOLDER}/{full}.git",
            "ssh_url": f"git@localhost:{full}.git", "default_branch": spec.default_branch,
            "size": spec.size_kb if spec.size_kb is not None
            else 0 if spec.empty else max(1, math.ceil(size / 1024)),
            "pushed_at": pushed, "updated_at": spec.updated_at or pushed,
            # A second apart, in creation order: GitHub's times, which order the listing.
            "created_at": rfc3339(BASE_TIME - 400 * 86400 + rid), "archived": False,
            "disabled": False, "visibility": "public",
            "has_wiki": spec.wiki is not None if spec.has_wiki is None else spec.has_wiki,
        }

    def _wiki(self, login: str, name: str, pages: dict[str, bytes]) -> None:
        """`<name>.wiki.git`: one commit of ``pages`` on `master` (GitHub's wiki branch)."""
        wiki = self.git_root / login / f"{name}.wiki.git"
        shutil.rmtree(wiki, ignore_errors=True)
        git("init", "--bare", "--quiet", "--template=", "--initial-branch=master", str(wiki))
        git("fast-import", "--quiet", cwd=wiki,
            data=commit("refs/heads/master", BASE_TIME, pages, None, "wiki", 1))

    def edit_wiki(self, login: str, name: str, pages: dict[str, bytes]) -> None:
        """A wiki edit: a new commit on the wiki's `master` (the repository's pushed_at
        does not move, as on GitHub)."""
        wiki = self.git_root / login / f"{name}.wiki.git"
        if not wiki.is_dir():
            raise FileNotFoundError(wiki)
        git("fast-import", "--quiet", cwd=wiki, data=commit(
            "refs/heads/master", int(time.time()), pages, "refs/heads/master^0", "wiki edit"))


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
