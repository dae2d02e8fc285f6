"""The GitHub stand-in itself, checked with real clients: urllib for the API, git for git."""

from __future__ import annotations

import gzip
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bulkbackup.testing.forge import DEFAULT_FILES, Forge, RepoSpec, make_users
from tests.helpers import git, git_run

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """(status, headers, body) of a GET; HTTP errors are answers too."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def listing(forge: Forge, login: str, query: str = "per_page=100&type=owner",
            headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    return get(f"{forge.url}/users/{login}/repos?{query}", headers)


def links(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(","):
        url, rel = part.split(";")
        out[rel.strip().removeprefix('rel="').removesuffix('"')] = url.strip()[1:-1]
    return out


def mirror(forge: Forge, login: str, name: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return git_run("clone", "--mirror", f"{forge.url}/{login}/{name}.git", str(dest),
                   env=GIT_ENV)


def test_pagination_three_pages_with_links(forge: Forge) -> None:
    t0 = time.monotonic()
    forge.add_user("many", [RepoSpec(f"r{i:03d}") for i in range(250)])
    assert time.monotonic() - t0 < 10
    url: str | None = f"{forge.url}/users/many/repos?per_page=100&type=owner"
    names: list[str] = []
    ids: list[int] = []
    sizes = []
    while url:
        status, headers, body = get(url)
        assert status == 200
        page = json.loads(body)
        sizes.append(len(page))
        names += [r["name"] for r in page]
        ids += [r["id"] for r in page]
        rels = links(headers["Link"])
        for target in rels.values():
            assert target.startswith(f"{forge.url}/users/many/repos?")
            assert "per_page=100" in target and "type=owner" in target
        url = rels.get("next")
        if url:
            assert rels["last"].endswith("page=3")
        else:
            assert set(rels) == {"prev", "first"} and rels["first"].endswith("page=1")
    assert sizes == [100, 100, 50]
    assert names == [f"r{i:03d}" for i in range(250)]
    assert ids == sorted(set(ids))  # unique, in listing order
    assert forge.counters["api_200"] == 3 and forge.counters["api"] == 3
    assert len(json.loads(listing(forge, "many", "type=owner")[2])) == 30  # default per_page
    assert len(json.loads(listing(forge, "many", "per_page=500")[2])) == 100  # capped


def test_single_page_has_no_link_and_github_shape(forge: Forge) -> None:
    when = "2026-01-02T03:04:05Z"
    forge.add_user("octocat", [RepoSpec("Hello-World"), RepoSpec("e", empty=True),
                               RepoSpec("f", fork=True, size_kb=42, pushed_at=when)])
    status, headers, body = listing(forge, "octocat")
    assert status == 200 and "Link" not in headers
    hello, empty, fork = json.loads(body)
    assert hello["clone_url"] == f"{forge.url}/octocat/Hello-World.git"
    assert hello["full_name"] == "octocat/Hello-World" and hello["private"] is False
    assert hello["owner"]["login"] == "octocat" and hello["owner"]["type"] == "User"
    assert hello["visibility"] == "public" and hello["default_branch"] == "main"
    assert {"id", "node_id", "html_url", "description", "url", "git_url", "ssh_url", "size",
            "pushed_at", "updated_at", "created_at", "archived", "disabled"} <= set(hello)
    assert hello["size"] > 0 and empty["size"] == 0 and fork["size"] == 42
    assert fork["fork"] is True and fork["pushed_at"] == fork["updated_at"] == when
    assert len({hello["id"], empty["id"], fork["id"]}) == 3
    for key in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                "X-RateLimit-Used"):
        assert headers[key].isdigit()
    assert headers["X-RateLimit-Resource"] == "core"


def test_etag_not_modified_404_and_zero_repos(forge: Forge) -> None:
    forge.add_user("a", [RepoSpec("x")])
    forge.add_user("nobody-home", [])
    status, headers, _ = listing(forge, "a")
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('W/"') and etag.endswith('"')
    status, headers, body = listing(forge, "a", headers={"If-None-Match": etag})
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    assert listing(forge, "a", headers={"If-None-Match": 'W/"other"'})[0] == 200
    status, _, body = listing(forge, "ghost-user")
    assert status == 404 and json.loads(body)["message"] == "Not Found"
    assert "documentation_url" in json.loads(body)
    assert listing(forge, "nobody-home")[:3:2] == (200, b"[]")
    assert forge.counters["api_304"] == 1 and forge.counters["api_404"] == 1
    assert forge.counters["api_200"] == 3 and forge.counters["api"] == 5
    forge.remove_user("a")
    assert listing(forge, "a")[0] == 404


def test_rate_limit_switch_primary_and_secondary(forge: Forge) -> None:
    forge.add_user("a", [RepoSpec("x")])
    forge.rate_limit(requests=2, reset_in_s=30)
    expected_reset = math.ceil(time.time() + 30)
    for _ in range(2):
        status, headers, body = listing(forge, "a")
        assert status == 403 and b"rate limit exceeded" in body
        assert headers["X-RateLimit-Remaining"] == "0"
        assert abs(int(headers["X-RateLimit-Reset"]) - expected_reset) <= 1
    assert listing(forge, "a")[0] == 200
    forge.rate_limit(requests=1, reset_in_s=2.5, secondary=True)
    status, headers, _ = listing(forge, "a")
    assert status == 429 and headers["Retry-After"] == "3"
    assert listing(forge, "a")[0] == 200
    forge.rate_limit(requests=5, reset_in_s=0.3)  # lifts at the reset time, as GitHub's
    assert listing(forge, "a")[0] == 403
    time.sleep(0.4)
    assert listing(forge, "a")[0] == 200
    assert forge.counters["api_403"] == 3 and forge.counters["api_429"] == 1


def test_token_budget_refills_and_unknown_tokens(forge: Forge) -> None:
    forge.add_user("a", [RepoSpec("x")])
    forge.set_token_budget("tok-a", remaining=2, reset_in_s=1.0)
    answers = [listing(forge, "a", headers={"Authorization": auth})
               for auth in ("token tok-a", "Bearer tok-a", "token tok-a")]
    assert [a[0] for a in answers] == [200, 200, 403]
    assert [a[1]["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0"]
    assert answers[0][1]["X-RateLimit-Limit"] == "2"
    assert int(answers[2][1]["X-RateLimit-Reset"]) <= math.ceil(time.time() + 1)
    time.sleep(1.1)
    assert listing(forge, "a", headers={"Authorization": "token tok-a"})[0] == 200
    assert forge.auth_headers_seen.count("token tok-a") == 3
    assert "Bearer tok-a" in forge.auth_headers_seen
    assert listing(forge, "a", headers={"Authorization": "token other"})[0] == 200
    forge.require_known_tokens = True
    status, _, body = listing(forge, "a", headers={"Authorization": "token other"})
    assert status == 401 and b"Bad credentials" in body
    assert listing(forge, "a")[0] == 200  # anonymous


def test_5xx_switch(forge: Forge) -> None:
    forge.add_user("a", [RepoSpec("x")])
    forge.fail_5xx(2, status=503)
    assert [listing(forge, "a")[0] for _ in range(3)] == [503, 503, 200]
    forge.fail_5xx(1)
    assert listing(forge, "a")[0] == 502
    assert forge.counters["api_5xx"] == 3 and forge.counters["api"] == 4


def test_mirror_clone_has_branches_both_tag_kinds_and_exact_content(
    forge: Forge, tmp_path: Path
) -> None:
    forge.add_user("octocat", [RepoSpec("Hello-World", default_branch="trunk", tags=["v1.0"],
                                        branches={"dev": {"dev.txt": b"dev\n"}})])
    dest = tmp_path / "m.git"
    assert mirror(forge, "octocat", "Hello-World", dest).returncode == 0
    out = git("for-each-ref", "--format=%(refname) %(objecttype)", cwd=dest, env=GIT_ENV)
    refs = dict(line.split(" ", 1) for line in out.splitlines())
    assert refs == {"refs/heads/trunk": "commit", "refs/heads/dev": "commit",
                    "refs/tags/v1.0": "tag", "refs/tags/v1.0-light": "commit"}
    assert git("symbolic-ref", "HEAD", cwd=dest, env=GIT_ENV).strip() == "refs/heads/trunk"
    for path, data in DEFAULT_FILES.items():
        shown = subprocess.run(["git", "show", f"trunk:{path}"], cwd=dest, capture_output=True,
                               check=True).stdout
        assert shown == data
    assert b"\0" in DEFAULT_FILES["bin/blob.dat"] and "docs/naïve-ß.txt" in DEFAULT_FILES
    assert git("show", "dev:dev.txt", cwd=dest, env=GIT_ENV) == "dev\n"
    assert git("show", "dev:README.md", cwd=dest, env=GIT_ENV).startswith("# Hello")
    git("fsck", "--strict", cwd=dest, env=GIT_ENV)
    # Builds are deterministic: the same spec gives the same commits in another forge.
    with Forge(tmp_path / "other") as other:
        other.add_user("o", [RepoSpec("h", default_branch="trunk", tags=["v1.0"],
                                      branches={"dev": {"dev.txt": b"dev\n"}})])
        theirs = git("for-each-ref", cwd=other.root / "git" / "o" / "h.git", env=GIT_ENV)
    assert theirs == git("for-each-ref", cwd=dest, env=GIT_ENV)


def test_empty_and_missing_repositories(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("empty", empty=True), RepoSpec("gone", missing=True)])
    proc = mirror(forge, "u", "empty", tmp_path / "e.git")
    assert proc.returncode == 0 and "empty repository" in proc.stderr
    proc = mirror(forge, "u", "gone", tmp_path / "g.git")
    assert proc.returncode != 0 and "not found" in proc.stderr
    assert forge.clones("u", "gone") == 1 and forge.upload_packs("u", "gone") == 0
    assert [r["name"] for r in json.loads(listing(forge, "u")[2])] == ["empty", "gone"]
    assert get(f"{forge.url}/u/../u/empty.git/info/refs?service=git-upload-pack")[0] == 404


def test_counters_and_push(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("a"), RepoSpec("b"), RepoSpec("e", empty=True)])
    _, headers, body = listing(forge, "u")
    before = json.loads(body)[0]
    forge.reset_counters()
    dest = tmp_path / "a.git"
    assert mirror(forge, "u", "a", dest).returncode == 0
    assert forge.clones("u", "a") == 1 and forge.counters["info_refs"] == 1
    assert forge.upload_packs("u", "a") == forge.counters["upload_pack"] >= 1
    assert forge.upload_packs("u", "b") == 0
    forge.push("u", "a", {"new.txt": b"new\n"})
    forge.push("u", "e", {"first.txt": b"first\n"})  # the first commit of an empty repo
    status, headers2, body = listing(forge, "u", headers={"If-None-Match": headers["ETag"]})
    assert status == 200 and headers2["ETag"] != headers["ETag"]
    after, _, pushed_empty = json.loads(body)
    assert after["pushed_at"] > before["pushed_at"] and after["updated_at"] > before["updated_at"]
    assert after["pushed_at"].endswith("Z") and len(after["pushed_at"]) == 20
    forge.push("u", "a", {"newer.txt": b"newer\n"})
    again = json.loads(listing(forge, "u")[2])[0]
    assert again["pushed_at"] > after["pushed_at"]  # strictly later, even within a second
    git("remote", "update", cwd=dest, env=GIT_ENV)
    assert git("show", "main:new.txt", cwd=dest, env=GIT_ENV) == "new\n"
    assert git("show", "main:README.md", cwd=dest, env=GIT_ENV).startswith("# Hello")
    assert forge.clones("u", "a") == 2
    assert pushed_empty["name"] == "e"
    assert mirror(forge, "u", "e", tmp_path / "e.git").returncode == 0
    assert git("show", "main:first.txt", cwd=tmp_path / "e.git", env=GIT_ENV) == "first\n"


def test_parallel_clones(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("par", [RepoSpec(f"r{i}", files={"f.txt": f"{i}\n".encode()})
                           for i in range(6)])

    def clone(i: int) -> subprocess.CompletedProcess[str]:
        return mirror(forge, "par", f"r{i % 6}", tmp_path / f"c{i}.git")

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(clone, range(24)))
    assert [p.returncode for p in results] == [0] * 24, [p.stderr for p in results]
    for i in range(24):
        assert git("show", "main:f.txt", cwd=tmp_path / f"c{i}.git", env=GIT_ENV) == f"{i % 6}\n"
    assert forge.counters["info_refs"] == 24


def test_large_pack_streams(forge: Forge, tmp_path: Path) -> None:
    # 8 MiB that compress poorly: a pack far bigger than any pipe or socket buffer.
    big = b"".join(i.to_bytes(4, "big") * 7 + bytes([i % 251]) for i in range(1 << 18))
    forge.add_user("big", [RepoSpec("huge", files={"big.bin": big})])
    dest = tmp_path / "h.git"
    assert mirror(forge, "big", "huge", dest).returncode == 0
    out = subprocess.run(["git", "show", "main:big.bin"], cwd=dest, capture_output=True,
                         check=True).stdout
    assert out == big


def _upload_pack(forge: Forge, body: bytes, headers: dict[str, str],
                 chunks: list[bytes] | None = None) -> tuple[int, bytes]:
    host, port = forge.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/x-git-upload-pack-request",
               "Git-Protocol": "version=2", **headers}
    try:
        if chunks is not None:
            conn.request("POST", "/u/a.git/git-upload-pack", body=iter(chunks), headers=headers,
                         encode_chunked=True)
        else:
            conn.request("POST", "/u/a.git/git-upload-pack", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_request_bodies_chunked_and_gzip(forge: Forge) -> None:
    forge.add_user("u", [RepoSpec("a", tags=["v1"])])
    ls_refs = b"0014command=ls-refs\n0000"
    status, body = _upload_pack(forge, ls_refs, {})
    assert status == 200 and b"refs/heads/main" in body and b"refs/tags/v1" in body
    status, chunked = _upload_pack(forge, b"", {}, chunks=[ls_refs[:7], ls_refs[7:]])
    assert (status, chunked) == (200, body)
    status, zipped = _upload_pack(forge, gzip.compress(ls_refs), {"Content-Encoding": "gzip"})
    assert (status, zipped) == (200, body)


def test_keep_alive_serves_api_and_git_on_one_connection(forge: Forge) -> None:
    forge.add_user("u", [RepoSpec("a")])
    host, port = forge.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    refs = "/u/a.git/info/refs?service=git-upload-pack"
    paths = ["/users/u/repos", "/users/nobody/repos", refs, "/users/u/repos",
             "/u/missing.git/info/refs?service=git-upload-pack", refs]
    sockets = set()
    try:
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            sockets.add(id(conn.sock))
            assert not resp.will_close, path
            if path == refs:
                assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
                assert b"# service=git-upload-pack" in body
    finally:
        conn.close()
    assert len(sockets) == 1
    assert forge.counters["api"] == 3 and forge.counters["info_refs"] == 3


def test_renamed_user_redirects_and_link_host(forge: Forge) -> None:
    forge.add_user("new-name", [RepoSpec(f"r{i}") for i in range(3)])
    forge.renamed["old-name"] = "new-name"
    status, _, body = listing(forge, "old-name", "per_page=2&type=owner")
    assert status == 200 and [r["name"] for r in json.loads(body)] == ["r0", "r1"]
    assert forge.counters["api_301"] == 1 and forge.counters["api_200"] == 1
    forge.link_host = "evil.example"
    _, headers, _ = listing(forge, "new-name", "per_page=2")
    assert links(headers["Link"])["next"] == (
        "http://evil.example/users/new-name/repos?per_page=2&page=2")


@pytest.mark.parametrize(("branches", "config", "sent"), [
    (100, "http.postBuffer=1048576", "Content-Encoding: gzip"),
    (2000, "http.postBuffer=65536", "Transfer-Encoding: chunked"),
])
def test_real_git_large_requests(
    forge: Forge, tmp_path: Path, branches: int, config: str, sent: str
) -> None:
    """Many wants: git gzips a request body that fits http.postBuffer, else sends it chunked."""
    forge.add_user("u", [RepoSpec("many", branches={
        f"b{i:04d}": {"f.txt": f"{i}\n".encode()} for i in range(branches)})])
    trace = tmp_path / "curl.log"
    env = {**GIT_ENV, "GIT_TRACE_CURL": str(trace), "GIT_TRACE_CURL_NO_DATA": "1"}
    proc = subprocess.run(["git", "-c", config, "clone", "--mirror", f"{forge.url}/u/many.git",
                           str(tmp_path / "m.git")], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"=> Send header: {sent}" in trace.read_text()
    heads = git("for-each-ref", "refs/heads", cwd=tmp_path / "m.git", env=GIT_ENV)
    assert len(heads.splitlines()) == branches + 1


def test_receive_pack_is_refused(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("a")])
    status = get(f"{forge.url}/u/a.git/info/refs?service=git-receive-pack")[0]
    assert status == 403
    work = tmp_path / "w"
    git("clone", "-q", f"{forge.url}/u/a.git", str(work), env=GIT_ENV)
    git("-c", "user.name=x", "-c", "user.email=x@example.com", "commit", "-q",
        "--allow-empty", "-m", "x", cwd=work, env=GIT_ENV)
    assert git_run("push", "origin", "main", cwd=work, env=GIT_ENV).returncode != 0


def test_raw_entries_are_served_verbatim(forge: Forge) -> None:
    forge.add_user("evil", [RepoSpec("ok")])
    raw = [{"name": "../x", "clone_url": f"{forge.url}/evil/ok.git"},
           {"name": "local", "clone_url": "file:///etc"},
           {"name": "elsewhere", "clone_url": "http://evil.example/x.git"}]
    for entry in raw:
        forge.add_raw_repo_entry("evil", entry)
    assert json.loads(listing(forge, "evil")[2])[1:] == raw


def test_stall_and_stop_interrupts_it(tmp_path: Path) -> None:
    forge = Forge(tmp_path / "forge").start()
    try:
        forge.stall_s = 0.5
        forge.add_user("s", [RepoSpec("slow", stall=True)])
        t0 = time.monotonic()
        assert mirror(forge, "s", "slow", tmp_path / "a.git").returncode == 0
        assert time.monotonic() - t0 >= 0.5
        forge.stall_s = 120
        proc = subprocess.Popen(["git", "clone", "--mirror", f"{forge.url}/s/slow.git",
                                 str(tmp_path / "b.git")], env=GIT_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while forge.upload_packs("s", "slow") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        handlers = list(forge._conns.values())
        assert handlers
        t0 = time.monotonic()
    finally:
        forge.stop()
    assert time.monotonic() - t0 < 5
    assert not any(t.is_alive() for t in handlers) and not forge._conns and not forge._procs
    assert proc.wait(30) != 0


def test_make_users_and_quiet_threads(forge: Forge, capfd: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    logins = make_users(forge, 30, 10)
    assert time.monotonic() - t0 < 10
    assert logins[0] == "user0000" and len(logins) == 30
    assert [r["name"] for r in json.loads(listing(forge, "user0029")[2])] == [
        f"repo{j}" for j in range(10)]
    listing(forge, "ghost-user")
    assert capfd.readouterr().err == ""


def test_script_mode_sample_and_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bulkbackup.testing.forge",
                             "--root", str(tmp_path),
                             "--port", "0", "--sample"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, body = get(f"{url}/users/octocat/repos?per_page=100&type=owner")
        names = {r["name"]: r for r in json.loads(body)}
        assert status == 200 and {"Hello-World", "empty-repo", "linguist"} <= set(names)
        assert names["linguist"]["fork"] and names["empty-repo"]["size"] == 0
        _, headers, _ = get(f"{url}/users/torvalds-demo/repos?per_page=5")
        assert 'rel="next"' in headers["Link"]
        assert get(f"{url}/users/ghost-user/repos")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
