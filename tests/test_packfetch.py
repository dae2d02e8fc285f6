"""Increments fetched with dulwich over smart HTTP from the stand-in, applied by real git.

Each case takes a base as the lead's full archive does (bulkbackup.git.gitops.GitWork: a mirror
without refs/pull/*, `git bundle create --all`), changes the repository, fetches the
increment, then restores base and increments in order into a fresh bare repository with
`git fetch --prune <part> '+refs/*:refs/*'` and compares with the stand-in's own refs.
"""

from __future__ import annotations

import base64
import functools
import os
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bulkbackup.config import GitHubSettings, RunSettings
from bulkbackup.errors import GitError
from bulkbackup.forge.git_auth import git_auth
from bulkbackup.git.auth import ANONYMOUS
from bulkbackup.git.packfetch import EMPTY_PACK, FetchedIncrement, fetch_increment
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import PACK_RUN as RUN
from tests.helpers import PACK_TOKEN as TOKEN
from tests.helpers import (
    base_of,
    check_increment,
    fetch,
    git,
    git_bytes,
    list_heads,
    refs_of,
    remote_refs,
    restore_bundles,
)

BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


# -- what an increment carries -------------------------------------------------------------


def test_one_new_commit_is_a_small_increment(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("a", files={"big.bin": os.urandom(2 << 20), "r.md": b"r\n"},
                                  branches={"dev": {"d.txt": b"d\n"}}, tags=["v1"])])
    base, old = base_of(forge, tmp_path, "a")
    forge.push("u", "a", {"new.txt": b"one new commit\n"})
    posts = forge.pack_requests("u", "a")
    inc = fetch(forge, tmp_path, "a", old, "1.bundle")
    assert inc.branch == "main" and forge.pack_requests("u", "a") == posts + 1  # one pack
    check_increment(forge, "a", inc, tmp_path, [base])
    assert inc.bundle is not None
    size = inc.bundle.stat().st_size
    assert 0 < inc.received_bytes < size < base.stat().st_size // 100
    # Prerequisites: the old branch tips (commits), not the annotated tag.
    prereqs = {line[1:41] for line in inc.bundle.read_bytes().split(b"\n\n")[0].decode()
               .splitlines() if line.startswith("-")}
    assert prereqs == {old["refs/heads/main"], old["refs/heads/dev"]}
    assert f"Basic {BASIC}" in forge.auth_headers_seen  # allow_http_token: the token is used
    print(f"\nbase bundle {base.stat().st_size} B, increment {size} B, "
          f"pack received {inc.received_bytes} B")


def test_force_push_brings_the_new_unrelated_history(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("f", tags=["v1"])])
    base, old = base_of(forge, tmp_path, "f")
    forge.force_push("u", "f", {"rewritten.txt": b"all new\n"})
    inc = fetch(forge, tmp_path, "f", old, "1.bundle")
    repo = check_increment(forge, "f", inc, tmp_path, [base])
    assert git("log", "--format=%s", "refs/heads/main", cwd=repo).split("\n")[0] == "force push"
    assert inc.head != old["refs/heads/main"]


def test_deleted_branch_and_tag_make_an_empty_pack(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("d", branches={"dev": {"d.txt": b"d\n"}}, tags=["v1"])])
    base, old = base_of(forge, tmp_path, "d")
    forge.delete_ref("u", "d", "refs/heads/dev")
    forge.delete_ref("u", "d", "refs/tags/v1")
    posts = forge.pack_requests("u", "d")
    inc = fetch(forge, tmp_path, "d", old, "1.bundle")
    assert forge.pack_requests("u", "d") == posts and inc.received_bytes == 0  # nothing asked
    assert inc.bundle is not None and inc.bundle.read_bytes().endswith(b"\n\n" + EMPTY_PACK)
    repo = check_increment(forge, "d", inc, tmp_path, [base])
    assert set(refs_of(repo)) == {"refs/heads/main", "refs/tags/v1-light"}


def test_new_annotated_tag(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("t")])
    base, old = base_of(forge, tmp_path, "t")
    forge.add_tag("u", "t", "v2")
    forge.add_tag("u", "t", "v2-light", annotated=False)
    inc = fetch(forge, tmp_path, "t", old, "1.bundle")
    repo = check_increment(forge, "t", inc, tmp_path, [base])
    assert git("cat-file", "-t", "refs/tags/v2", cwd=repo).strip() == "tag"
    assert inc.refs["refs/tags/v2-light"] == old["refs/heads/main"]


def test_a_chain_of_three_increments_applied_in_order(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("c", tags=["v1"])])
    base, old = base_of(forge, tmp_path, "c")
    parts = [base]

    def rewrite() -> None:
        forge.force_push("u", "c", {"three.txt": b"3\n"})
        forge.delete_ref("u", "c", "refs/tags/v1")

    for i, change in enumerate([
            lambda: forge.push("u", "c", {"one.txt": b"1\n"}),
            lambda: forge.add_branch("u", "c", "feature", {"two.txt": b"2\n"}), rewrite],
            start=1):
        change()
        inc = fetch(forge, tmp_path, "c", old, f"{i}.bundle")
        check_increment(forge, "c", inc, tmp_path, parts)
        assert inc.bundle is not None
        parts.append(inc.bundle)
        old = list_heads(inc.bundle)  # the next increment starts from this one
    assert len(parts) == 4


def test_refs_moved_to_objects_already_had(forge: Forge, tmp_path: Path) -> None:
    """A branch reset to its parent (wanted, though no object is new) and a branch copied
    (not wanted at all): the increment holds the refs, git accepts it."""
    forge.add_user("u", [RepoSpec("m")])
    forge.push("u", "m", {"second.txt": b"2\n"})
    base, old = base_of(forge, tmp_path, "m")
    source = forge.git_root / "u" / "m.git"
    git("update-ref", "refs/heads/copy", "refs/heads/main", cwd=source)
    inc = fetch(forge, tmp_path, "m", old, "1.bundle")
    assert inc.received_bytes == 0
    check_increment(forge, "m", inc, tmp_path, [base])
    parent = git("rev-parse", "refs/heads/main~1", cwd=source).strip()
    git("update-ref", "refs/heads/main", parent, cwd=source)
    assert inc.bundle is not None
    again = fetch(forge, tmp_path, "m", list_heads(inc.bundle), "2.bundle")
    assert again.head == parent and again.received_bytes == len(EMPTY_PACK)  # no new object
    check_increment(forge, "m", again, tmp_path, [base, inc.bundle])


def test_nothing_changed_asks_for_no_pack(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("n", tags=["v1"])])
    _, old = base_of(forge, tmp_path, "n")
    clones, posts = forge.clones("u", "n"), forge.pack_requests("u", "n")
    (tmp_path / "1.bundle").write_bytes(b"stale")
    inc = fetch(forge, tmp_path, "n", old, "1.bundle")
    assert inc.bundle is None and not (tmp_path / "1.bundle").exists()
    assert inc.refs == remote_refs(forge, "u", "n") and inc.branch == "main"
    assert inc.head == old["HEAD"] and inc.received_bytes == 0
    assert forge.clones("u", "n") == clones + 1 and forge.pack_requests("u", "n") == posts


def test_head_moving_alone_is_an_increment(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("h", branches={"dev": {"d.txt": b"d\n"}})])
    base, old = base_of(forge, tmp_path, "h")
    inc = fetch(forge, tmp_path, "h", old, "1.bundle", default_branch="dev")
    assert inc.branch == "dev" and inc.bundle is not None and inc.received_bytes == 0
    assert list_heads(inc.bundle)["HEAD"] == old["refs/heads/dev"]
    check_increment(forge, "h", inc, tmp_path, [base])
    # No default branch from the API, or one that is gone: the remote HEAD's branch.
    for default in (None, "gone"):
        got = fetch(forge, tmp_path, "h", old, "0.bundle", default_branch=default)
        assert got.branch == "main" and got.head == old["refs/heads/main"]
    # Without HEAD in the old state only the refs are compared.
    without = {k: v for k, v in old.items() if k != "HEAD"}
    assert fetch(forge, tmp_path, "h", without, "2.bundle", default_branch="dev").bundle is None


def test_emptied_repository(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("e", tags=["v1"])])
    _, old = base_of(forge, tmp_path, "e")
    forge.empty_repo("u", "e")
    inc = fetch(forge, tmp_path, "e", old, "1.bundle")
    assert inc == FetchedIncrement(None, {}, None, None, 0)
    assert not (tmp_path / "1.bundle").exists()


def test_pull_refs_stay_out_unless_asked(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("p", pulls=[1, 2])])
    base, old = base_of(forge, tmp_path, "p")
    pulls = {r: s for r, s in remote_refs(forge, "u", "p", pulls=True).items() if "pull" in r}
    forge.push("u", "p", {"new.txt": b"new\n"})
    inc = fetch(forge, tmp_path, "p", old, "1.bundle")
    repo = check_increment(forge, "p", inc, tmp_path, [base])
    for sha in pulls.values():  # neither the refs nor the objects only they reach
        assert subprocess.run(["git", "cat-file", "-e", sha], cwd=repo).returncode != 0
    kept = fetch(forge, tmp_path, "p", old, "2.bundle", pull_refs=True)
    assert kept.refs == remote_refs(forge, "u", "p", pulls=True) and kept.bundle is not None
    repo = restore_bundles(tmp_path, [base, kept.bundle])
    assert all(git("cat-file", "-t", sha, cwd=repo).strip() == "commit" for sha in pulls.values())


def test_a_huge_blob_arrives_whole(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("b")])
    base, old = base_of(forge, tmp_path, "b")
    blob = os.urandom(9 << 20)
    forge.push("u", "b", {"huge.bin": blob})
    calls: list[int] = []
    inc = fetch(forge, tmp_path, "b", old, "1.bundle", check=lambda: calls.append(1))
    assert inc.received_bytes > len(blob) and len(calls) >= 4  # steps, and every 4 MiB
    repo = check_increment(forge, "b", inc, tmp_path, [base])
    assert git_bytes("cat-file", "blob", "refs/heads/main:huge.bin", cwd=repo) == blob


def test_a_tag_of_a_blob_is_no_prerequisite(forge: Forge, tmp_path: Path) -> None:
    """Old tags' peeled objects are not prerequisites: this one is a blob (as git.git's
    junio-gpg-pub), which `git bundle verify` would refuse as a prerequisite."""
    forge.add_user("u", [RepoSpec("g")])
    source = forge.git_root / "u" / "g.git"
    blob = git("hash-object", "-w", "--stdin", cwd=source, input=b"a key\n").strip()
    git("-c", "user.name=T", "-c", "user.email=t@example.com", "tag", "-a", "-m", "key",
        "key", blob, cwd=source)
    base, old = base_of(forge, tmp_path, "g")
    forge.push("u", "g", {"n.txt": b"n\n"})
    inc = fetch(forge, tmp_path, "g", old, "1.bundle")
    check_increment(forge, "g", inc, tmp_path, [base])


def test_renamed_repository(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("old")])
    base, old = base_of(forge, tmp_path, "old")
    forge.rename_repo("u", "old", "new")
    forge.push("u", "new", {"n.txt": b"n\n"})
    with pytest.raises(GitError, match="404"):
        fetch(forge, tmp_path, "old", old, "0.bundle")
    entry = forge.users["u"][0]
    assert entry["name"] == "new" and entry["clone_url"].endswith("/u/new.git")
    check_increment(forge, "new", fetch(forge, tmp_path, "new", old, "1.bundle"), tmp_path,
                    [base])


# -- where the token goes, and what the client refuses -------------------------------------


@pytest.fixture
def other(forge: Forge) -> Iterator[Forge]:
    """Another host (`localhost`) serving the same repositories; records Authorization."""
    with Forge(forge.root, host="localhost") as f:
        yield f


def test_a_redirect_is_not_followed_and_the_token_stays_home(
    forge: Forge, other: Forge, tmp_path: Path
) -> None:
    forge.add_user("u", [RepoSpec("r")])
    forge.git_redirect = other.url
    with pytest.raises(GitError, match="302") as info:
        fetch(forge, tmp_path, "r", {}, "1.bundle")
    assert TOKEN not in str(info.value) and BASIC not in str(info.value)
    assert forge.auth_headers_seen == [f"Basic {BASIC}"]  # the configured host had it
    assert other.auth_headers_seen == [] and other.counters["info_refs"] == 0
    assert list(tmp_path.glob("1.bundle*")) == [] and list(tmp_path.glob(".1.bundle*")) == []


def test_the_token_goes_only_to_the_clone_host_over_https(
    forge: Forge, other: Forge, tmp_path: Path
) -> None:
    forge.add_user("u", [RepoSpec("a")])
    plain = GitHubSettings(api_url=forge.url)  # http:// without allow_http_token
    assert fetch(forge, tmp_path, "a", {}, "1.bundle", gh=plain).bundle is not None
    off = GitHubSettings(api_url=forge.url, allow_http_token=True, token_for_git=False)
    assert fetch(forge, tmp_path, "a", {}, "2.bundle", gh=off).bundle is not None
    assert forge.auth_headers_seen == []
    allowed = GitHubSettings(api_url=forge.url, allow_http_token=True)  # for 127.0.0.1 only
    inc = fetch_increment(f"{other.url}/u/a.git", {}, "main", tmp_path / "3.bundle", RUN,
                          git_auth(allowed, TOKEN))
    assert inc.bundle is not None and other.auth_headers_seen == []


@pytest.mark.parametrize("clone_url", [
    "file:///tmp/x.git", "ssh://git@127.0.0.1/u/a.git", "git://127.0.0.1/u/a.git",
    f"http://x-access-token:{TOKEN}@127.0.0.1:1/u/a.git", "http://127.0.0.1:1/u/a.git?x=1"])
def test_only_plain_http_urls(tmp_path: Path, clone_url: str) -> None:
    with pytest.raises(GitError, match="refused") as info:
        fetch_increment(clone_url, {}, "main", tmp_path / "x.bundle", RUN,
                        git_auth(GitHubSettings(), TOKEN))
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("kind", ["stall", "stall_mid", "timeout"])
def test_a_stalled_server_ends_the_fetch(forge: Forge, tmp_path: Path, kind: str) -> None:
    forge.stall_s = 120
    forge.add_user("u", [RepoSpec("s", stall=kind != "stall_mid", stall_mid=kind == "stall_mid")])
    run: dict[str, Any] = ({"git_timeout_s": 2, "git_low_speed_bytes_s": 0} if kind == "timeout"
                           else {"git_low_speed_bytes_s": 1000, "git_low_speed_time_s": 1})
    with pytest.raises(GitError) as info:
        fetch(forge, tmp_path, "s", {}, "1.bundle", **run)
    assert ("timed out after 2s" if kind == "timeout" else "stalled") in str(info.value)
    # One try: v2's ls-refs (where `stall` stalls), then for stall_mid the fetch.
    assert forge.upload_packs("u", "s") == 1 + (kind == "stall_mid")
    assert [p.name for p in tmp_path.iterdir() if "bundle" in p.name] == []


class _Drip(socketserver.BaseRequestHandler):
    """Answers every request one byte at a time, forever (until the server stops): the status
    line and headers (`head`), or a sized smart answer's body."""

    head = True
    stop = threading.Event()

    def handle(self) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += self.request.recv(4096) or b"\r\n\r\n"
        # The body: a v0 advertisement (read as it streams: it must look like one).
        body = b"001e# service=git-upload-pack\n0000" + b"".join(
            b"%04x%s refs/tags/t%07d\n" % (64, b"a" * 40, i) for i in range(20_000))
        answer = (b"HTTP/1.1 200 OK\r\n" + b"X-Drip: a\r\n" * 10**6 if self.head else
                  b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-"
                  b"advertisement\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        start = answer.index(b"\r\n\r\n") + 4 if not self.head else 0
        self.request.sendall(answer[:start])
        for i in range(start, len(answer)):
            if self.stop.wait(0.2):
                return
            try:
                self.request.sendall(answer[i : i + 1])
            except OSError:
                return


@pytest.mark.parametrize(("head", "low"), [(True, False), (False, False), (False, True)])
def test_a_dripping_server_is_cut(tmp_path: Path, head: bool, low: bool) -> None:
    """A byte every 0.2 s: no read ever times out. Without the low-speed rule only the
    deadline ends it (while http.client reads the headers: the watchdog); with it, the bytes
    counted over git_low_speed_time_s do."""
    class Handler(_Drip):
        pass

    Handler.head, Handler.stop = head, threading.Event()
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        run = RunSettings(git_timeout_s=30 if low else 2, git_low_speed_bytes_s=100 * low,
                          git_low_speed_time_s=1)
        try:
            with pytest.raises(GitError, match="stalled" if low else "timed out after 2s"):
                fetch_increment(f"http://127.0.0.1:{server.server_address[1]}/u/a.git", {},
                                "main", tmp_path / "1.bundle", run, ANONYMOUS)
        finally:
            Handler.stop.set()
            server.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_a_pack_above_the_cap_is_refused(forge: Forge, tmp_path: Path) -> None:
    forge.add_user("u", [RepoSpec("big")])
    _, old = base_of(forge, tmp_path, "big")
    forge.push("u", "big", {"big.bin": os.urandom(8 << 20)})
    with pytest.raises(GitError, match="larger than 3145728 bytes"):  # 2 x 1 MiB + 1 MiB
        fetch(forge, tmp_path, "big", old, "1.bundle", max_repo_kb=1024)
    assert [p.name for p in tmp_path.iterdir() if "1.bundle" in p.name] == []


class Abandon(Exception):
    pass


@pytest.mark.parametrize("when", ["first", "mid-pack"])
def test_check_raising_abandons_and_leaves_no_file(forge: Forge, tmp_path: Path,
                                                   when: str) -> None:
    forge.add_user("u", [RepoSpec("k")])
    _, old = base_of(forge, tmp_path, "k")
    forge.push("u", "k", {"huge.bin": os.urandom(9 << 20)})
    posts = forge.pack_requests("u", "k")

    def check() -> None:
        if when == "first" or list(tmp_path.glob(".1.bundle.*")):  # the pack is arriving
            raise Abandon

    with pytest.raises(Abandon):
        fetch(forge, tmp_path, "k", old, "1.bundle", check=check)
    assert forge.pack_requests("u", "k") == posts + (when == "mid-pack")
    assert [p.name for p in tmp_path.iterdir() if "1.bundle" in p.name] == []


@pytest.fixture
def dumb(tmp_path: Path, forge: Forge) -> Iterator[str]:
    """A plain static web server over a copy of a bare repository: git's dumb protocol."""
    forge.add_user("u", [RepoSpec("a")])
    root = tmp_path / "static"
    git("clone", "-q", "--bare", str(forge.git_root / "u" / "a.git"), str(root / "u" / "a.git"),
        cwd=tmp_path)
    git("update-server-info", cwd=root / "u" / "a.git")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_dumb_or_non_git_server_is_refused(dumb: str, forge: Forge, tmp_path: Path) -> None:
    gh = GitHubSettings(api_url=dumb, allow_http_token=True)
    with pytest.raises(GitError, match="not a smart git server"):
        fetch_increment(f"{dumb}/u/a.git", {}, "main", tmp_path / "1.bundle", RUN,
                        git_auth(gh, TOKEN))
    with pytest.raises(GitError, match="404"):  # the API's host, not a repository
        fetch_increment(f"{forge.url}/users/u", {}, "main", tmp_path / "2.bundle", RUN,
                        git_auth(GitHubSettings(api_url=forge.url), None))
    assert not (tmp_path / "1.bundle").exists() and not (tmp_path / "2.bundle").exists()
