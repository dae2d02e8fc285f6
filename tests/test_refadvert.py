"""The increment fetch's ref listing (bulkbackup/git/refadvert.py): protocol v2's `ls-refs` with
ref prefixes against the stand-in (GitHub's refs/pull/* never listed), v0 from a server
without v2, and a listing refused while it streams once past the cap."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bulkbackup import config
from bulkbackup.errors import GitError
from bulkbackup.git.refadvert import MAX_REFS, Pkts, pkt, read_info_refs, read_ls_refs, ref_prefixes
from bulkbackup.store import open_store
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import ROOT, base_of, check_increment, fetch, git, list_heads, run_cli


def many_refs(forge: Forge, name: str, tags: int, pulls: int) -> None:
    """``tags`` lightweight tags and ``pulls`` refs/pull/<n>/head on the default branch,
    written straight into packed-refs (`update-ref` makes 10 000 refs in a minute)."""
    repo = forge.git_root / "u" / f"{name}.git"
    tip = git("rev-parse", "refs/heads/main", cwd=repo).strip()
    git("pack-refs", "--all", cwd=repo)
    header, *lines = (repo / "packed-refs").read_text().splitlines(keepends=True)
    entries: list[tuple[str, str]] = []  # (name, its line and its peeled line)
    for line in lines:
        if line.startswith("^"):
            entries[-1] = (entries[-1][0], entries[-1][1] + line)
        else:
            entries.append((line.split()[1], line))
    new = [f"refs/tags/t{i:05d}" for i in range(tags)]
    new += [f"refs/pull/{i}/head" for i in range(pulls)]
    entries += [(ref, f"{tip} {ref}\n") for ref in new]
    (repo / "packed-refs").write_text(header + "".join(b for _, b in sorted(entries)))


def listing_bytes(forge: Forge) -> int:
    with forge.lock:
        return forge.counters["git_bytes_sent_refs"]


@pytest.mark.parametrize("v2", [True, False])
def test_the_increment_lists_no_pull_refs_over_v2(forge: Forge, tmp_path: Path,
                                                  v2: bool) -> None:
    forge.add_user("u", [RepoSpec("a", tags=["v1"])])
    many_refs(forge, "a", tags=0, pulls=3000)
    base, old = base_of(forge, tmp_path, "a")
    forge.push("u", "a", {"new.txt": b"new\n"})
    forge.git_v2 = v2
    forge.reset_counters()
    inc = fetch(forge, tmp_path, "a", old, "1.bundle")
    check_increment(forge, "a", inc, tmp_path, [base])
    assert forge.pack_requests("u", "a") == 1
    # v0's advertisement holds every pull ref (60 bytes each); v2's ls-refs none of them.
    listed = listing_bytes(forge)
    assert (listed < 1000) if v2 else (listed > 3000 * 60)


def test_v2_and_v0_fetch_the_same_pack(forge: Forge, tmp_path: Path) -> None:
    """Same refs, same pack (OFS deltas in both: dulwich's v2 fetch alone would ask for
    REF_DELTA's 20-byte bases)."""
    files = {f"f{i}.txt": os.urandom(600).hex().encode() for i in range(100)}
    forge.add_user("u", [RepoSpec("d", files=files)])
    base, old = base_of(forge, tmp_path, "d")
    for step in (b"one", b"two"):  # the second commit's blobs: deltas inside the pack
        forge.push("u", "d", {n: d[:-8] + step + b"\n" for n, d in files.items()})
    got = {}
    for v2 in (True, False):
        forge.git_v2 = v2
        got[v2] = fetch(forge, tmp_path, "d", old, f"{v2}.bundle")
        check_increment(forge, "d", got[v2], tmp_path, [base])
    assert got[True].refs == got[False].refs
    assert abs(got[True].received_bytes - got[False].received_bytes) < 100


def test_another_namespace_of_the_base_stays(forge: Forge, tmp_path: Path) -> None:
    """refs/notes/* is neither a branch nor a tag: asked for because the base has it (an
    increment without it would delete it at restore, which applies parts with --prune)."""
    forge.add_user("u", [RepoSpec("n")])
    source = forge.git_root / "u" / "n.git"
    git("update-ref", "refs/notes/commits", "refs/heads/main", cwd=source)
    base, old = base_of(forge, tmp_path, "n")
    assert "refs/notes/commits" in old
    forge.push("u", "n", {"new.txt": b"new\n"})
    inc = fetch(forge, tmp_path, "n", old, "1.bundle")
    assert inc.bundle is not None and "refs/notes/commits" in list_heads(inc.bundle)
    check_increment(forge, "n", inc, tmp_path, [base])


def test_ref_prefixes() -> None:
    assert ref_prefixes({"refs/heads/main": "", "refs/pull/1/head": ""}, False) == (
        "refs/heads/", "refs/tags/")
    assert ref_prefixes({"refs/notes/x": "", "refs/odd": ""}, True) == (
        "refs/heads/", "refs/tags/", "refs/pull/", "refs/notes/", "refs/odd")
    assert ref_prefixes({f"refs/n{i}/x": "" for i in range(65)}, False) == ("refs/",)
    assert ref_prefixes({"refs/a\nref-prefix refs/": ""}, False) == ("refs/heads/", "refs/tags/")


# -- the zip of a change: made from the proof's repository, no fetch of its own -------------


@pytest.mark.parametrize("v2", [True, False])
def test_a_changes_zip_costs_no_fetch_of_its_own(env: None, forge: Forge, tmp_path: Path,
                                                 v2: bool) -> None:
    """Issue 26.2: the zip's depth-1 fetch listed every ref (pull refs and tags followed);
    now an increment's zip comes from the repository its proof built (archive/writer.py): one
    fetch per change, nothing shallow, whatever the repository's refs."""
    blob = os.urandom(200_000)
    forge.add_user("u", [RepoSpec("z", files={"blob.bin": blob}, tags=["v1"])])
    many_refs(forge, "z", tags=2000, pulls=2000)
    assert run_cli("sync", "u").returncode == 0
    forge.push("u", "z", {"later.txt": b"later\n"})
    forge.git_v2 = v2
    forge.reset_counters()
    proc = run_cli("sync", "u")
    assert proc.returncode == 0, proc.stderr
    assert forge.pack_requests("u", "z") == 1  # the increment's, and no depth-1 fetch
    with forge.lock:
        assert forge.counters["git_bytes_sent_shallow"] == 0
    store = open_store(config.load().store)
    try:
        head = store.head("u/z.bundle")
        assert head is not None and head.get("Increments") == "1"
        path = tmp_path / "z.zip"
        path.write_bytes(store.read_bytes("u/z.zip"))
    finally:
        store.close()
    with zipfile.ZipFile(path) as z:
        assert z.read("z-main/blob.bin") == blob and z.read("z-main/later.txt") == b"later\n"


# -- what the parser refuses -------------------------------------------------------------


def v0(*lines: bytes) -> Pkts:
    body = pkt(b"# service=git-upload-pack\n") + b"0000" + b"".join(map(pkt, lines)) + b"0000"
    return Pkts(io.BytesIO(body).read)


def ls_refs(*lines: bytes) -> Pkts:
    return Pkts(io.BytesIO(b"".join(map(pkt, lines)) + b"0000").read)


OID = b"a" * 40


def test_a_v0_listing_is_filtered_as_v2_asks() -> None:
    got = read_info_refs(v0(OID + b" HEAD\0multi_ack symref=HEAD:refs/heads/main\n",
                            OID + b" refs/heads/main\n", OID + b" refs/pull/1/head\n",
                            OID + b" refs/tags/v1\n", b"b" * 40 + b" refs/tags/v1^{}\n",
                            OID + b" refs/notes/x\n"),
                         ("refs/heads/", "refs/tags/"), False)
    assert not isinstance(got, set)
    assert got.refs == {"refs/heads/main": OID.decode(), "refs/tags/v1": OID.decode()}
    assert got.head_target == "refs/heads/main" and got.version == 0
    assert b"multi_ack" in got.capabilities
    v2 = read_ls_refs(ls_refs(OID + b" HEAD symref-target:refs/heads/main\n",
                              OID + b" refs/heads/main\n", OID + b" refs/pull/1/head\n"),
                      ("refs/heads/",), False, set())
    assert v2.refs == {"refs/heads/main": OID.decode()} and v2.head_target == "refs/heads/main"


@pytest.mark.parametrize("name", [b"refs/heads/a\x01b", b"refs/heads/a\tb", b"refs/heads/../x",
                                  b"refs/heads/x.lock", b"refs/heads/\xff", b"refs/heads/x/"])
def test_a_hostile_ref_name_is_refused(name: bytes) -> None:
    with pytest.raises(GitError):
        read_ls_refs(ls_refs(OID + b" " + name + b"\n"), ("refs/heads/",), False, set())
    with pytest.raises(GitError, match="malformed object id"):
        read_ls_refs(ls_refs(b"A" * 40 + b" refs/heads/main\n"), ("refs/heads/",), False, set())


@pytest.mark.parametrize("body", [b"0000", b"zzzz", b"001e# service=git-upload-pack\n0000004",
                                  b"0008ERR \n", b"000bnot git\n"])
def test_a_broken_listing_is_refused(body: bytes) -> None:
    with pytest.raises(GitError, match=r"not git's protocol|ended early|server said"):
        read_info_refs(Pkts(io.BytesIO(body).read), ("refs/",), False)


# -- 19.12: refused while it streams, in bounded memory -----------------------------------


class _Huge(BaseHTTPRequestHandler):
    """A smart server advertising ``refs`` refs/tags/* (v0, or v2's ls-refs), generated as
    it is sent; counts the body bytes the client took."""

    protocol_version = "HTTP/1.1"
    refs = 1_000_000
    v2 = False
    sent = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.v2:
            caps = [b"version 2\n", b"ls-refs\n", b"fetch=shallow\n", b"object-format=sha1\n"]
            self._answer("advertisement", b"".join(map(pkt, caps)) + b"0000", [])
        else:
            self._answer("advertisement", pkt(b"# service=git-upload-pack\n") + b"0000" + pkt(
                b"%s refs/tags/t0000000\0multi_ack side-band-64k ofs-delta\n" % OID), [1])

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer("result", b"", [0])

    def _answer(self, kind: str, head: bytes, start: list[int]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"application/x-git-upload-pack-{kind}")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = range(start[0], self.refs) if start else range(0)
        chunk = [head]
        try:
            for i in lines:
                chunk.append(pkt(b"%s refs/tags/t%07d\n" % (OID, i)))
                if len(chunk) >= 1000 or i == lines[-1]:
                    self._chunk(b"".join(chunk))
                    chunk = []
            self._chunk(b"".join(chunk) + (b"0000" if start else b""))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            with self.lock:
                type(self).sent += len(data)


@pytest.fixture
def huge() -> Iterator[type[_Huge]]:
    handler = type("Handler", (_Huge,), {"sent": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_port}/u/a.git"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


_FETCH = """
import json, resource, sys
from pathlib import Path
from bulkbackup import config
from bulkbackup.config import RunSettings
from bulkbackup import config
from bulkbackup.config import RunSettings
from bulkbackup.git.auth import ANONYMOUS
from bulkbackup.errors import GitError
from bulkbackup.git.gitops import GitWork
from bulkbackup.git.packfetch import fetch_increment
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    fetch_increment(sys.argv[1], {}, "main", Path(sys.argv[2]), RunSettings(git_timeout_s=300),
                    ANONYMOUS)
    error = ""
except GitError as exc:
    error = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "before_kb": before, "after_kb": after}))
"""


@pytest.mark.parametrize("v2", [False, True])
def test_a_million_refs_are_refused_while_they_stream(huge: type[_Huge], tmp_path: Path,
                                                      v2: bool) -> None:
    huge.v2 = v2
    proc = subprocess.run(
        [sys.executable, "-c", _FETCH, huge.url, str(tmp_path / "1.bundle")],  # type: ignore
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    print(f"\n{'v2' if v2 else 'v0'}: {got}, server sent {huge.sent} B")
    assert got["error"] == f"git fetch refused: the server advertises more than {MAX_REFS} refs"
    # Read up to the cap (64 bytes a ref), not the 64 MB listing (socket buffers aside).
    assert huge.sent < MAX_REFS * 64 + (8 << 20)
    assert got["after_kb"] - got["before_kb"] < 128 << 10  # 1 M refs held whole: ~330 MB
    assert not (tmp_path / "1.bundle").exists()
