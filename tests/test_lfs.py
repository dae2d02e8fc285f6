"""Git LFS objects end to end, on both stores: a real `bulkbackup sync` from the stand-in
finds the pointers in the new commits, fetches each object once through the LFS batch API
(the token only to the git host), records every hostile case in the bundle's `LfsError`
while the repository is archived anyway; `restore` puts the objects where `git lfs` finds
them."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR, LFS_ERROR
from bulkbackup.git.lfspointers import parse_pointer
from bulkbackup.store import Store
from bulkbackup.testing import lfs
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.lfs import LfsObject
from tests.helpers import git, run_cli

TOKEN = "ghp_LFStoken0123456789abcdefABCDEF012345"
BASIC = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()

GOOD = {"data/own.bin": LfsObject(os.urandom(3000)),
        "data/cdn.bin": LfsObject(os.urandom(2000), lfs.CDN),
        "data/bare.bin": LfsObject(os.urandom(1000), lfs.CDN_BARE)}
HOSTILE = {f"bad/{mode}.bin": LfsObject(f"{mode} object\n".encode() * 40, mode)
           for mode in (lfs.MISSING, lfs.MISMATCH, lfs.LONGER, lfs.REDIRECT, lfs.HUGE)}


def sync_with_token(tmp_path: Path, login: str, run: str = "") -> str:
    cfg = tmp_path / "lfs.yaml"
    cfg.write_text(f"github:\n  allow_http_token: true\nrun:\n  max_lfs_object_mb: 1024\n{run}")
    proc = run_cli("sync", login, env={"GITHUB_TOKEN": TOKEN, "BULKBACKUP_CONFIG": str(cfg)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def stored_oids(store: Store, login: str, repo: str) -> set[str]:
    return {layout.parse_key(i.key).oid for i in store.list(layout.lfs_prefix(login, repo))}


def test_lfs_objects_are_stored_once_and_restored_where_git_lfs_finds_them(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("lena", [RepoSpec("media", lfs={**GOOD, **HOSTILE})])
    out = sync_with_token(tmp_path, "lena")
    assert "LFS objects 3 stored, 5 not stored" in out
    assert stored_oids(store, "lena", "media") == {o.oid for o in GOOD.values()}
    for obj in GOOD.values():
        assert store.read_bytes(layout.lfs_key("lena", "media", obj.oid)) == obj.content

    # The token went to the git host only; the CDN got its own header, or nothing.
    host = urlsplit(forge.url).netloc
    seen = {oid: (where, auth) for where, oid, auth in forge.lfs_seen}
    assert seen[GOOD["data/own.bin"].oid] == (host, BASIC)
    assert seen[GOOD["data/cdn.bin"].oid] == (lfs.other_host(host), lfs.CDN_AUTH)
    assert seen[GOOD["data/bare.bin"].oid] == (lfs.other_host(host), None)
    assert not any(TOKEN in (a or "") or a == BASIC for w, _, a in forge.lfs_seen if w != host)
    assert HOSTILE["bad/huge.bin"].oid not in seen  # above the cap: never asked for

    # Each hostile case is recorded, the repository archived and not failed.
    bundle = store.head(layout.bundle_key("lena", "media"))
    assert bundle is not None and bundle.size > 0 and not bundle.get(ERROR)
    recorded = bundle.get(LFS_ERROR)
    assert recorded.startswith("5 LFS objects not stored: ")
    for path, why in (("bad/missing.bin", "404"), ("bad/mismatch.bin", "sha256 mismatch"),
                      ("bad/longer.bin", "larger than its pointer"),
                      ("bad/redirect.bin", "HTTP 302"), ("bad/huge.bin", "max_lfs_object_mb")):
        assert f"{HOSTILE[path].oid}: " in recorded and why in recorded, (path, recorded)
    user = store.head("lena")
    assert user is not None and not user.get(ERROR)

    # A push without LFS changes: an increment, no LFS request at all (new commits only).
    first = len(forge.lfs_seen)
    forge.reset_counters()
    forge.push("lena", "media", {"notes.txt": b"a change\n"})
    sync_with_token(tmp_path, "lena")
    assert forge.counters["lfs_batch"] == forge.counters["lfs_download"] == 0
    # A full archive scans every commit again: the stored objects are not fetched again,
    # only the ones that failed are asked for.
    forge.push("lena", "media", {"notes.txt": b"another change\n"})
    sync_with_token(tmp_path, "lena", "  max_increments: 0\n")
    assert forge.counters["lfs_batch"] == 1
    again = {oid for _, oid, _ in forge.lfs_seen[first:]}
    assert again.isdisjoint(o.oid for o in GOOD.values())
    assert stored_oids(store, "lena", "media") == {o.oid for o in GOOD.values()}

    proc = run_cli("restore", "lena/media", "--to", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 LFS objects" in proc.stdout
    mirror = tmp_path / "r" / "lena" / "media.git"
    for path, obj in GOOD.items():
        pointer = parse_pointer(git("show", f"main:{path}", cwd=mirror).encode())
        assert pointer == (obj.oid, len(obj.content))
        where = mirror / "lfs" / "objects" / obj.oid[:2] / obj.oid[2:4] / obj.oid
        assert hashlib.sha256(where.read_bytes()).hexdigest() == obj.oid

    shown = orjson.loads(run_cli("show", "lena", "--json").stdout)["repositories"][0]
    assert (shown["lfs_objects"], shown["lfs_bytes"]) == (3, 6000)
    figures = orjson.loads(run_cli("stats", "--json").stdout)["more_than_git"]
    assert (figures["lfs_objects"], figures["lfs_bytes"]) == (3, 6000)


def test_without_lfs_setting_nothing_is_fetched(env: None, forge: Forge, store: Store,
                                                 tmp_path: Path) -> None:
    forge.add_user("otto", [RepoSpec("media", lfs=GOOD)])
    sync_with_token(tmp_path, "otto", "  lfs: false\n")
    assert forge.counters["lfs_batch"] == 0 and not stored_oids(store, "otto", "media")


def test_pointer_parsing() -> None:
    obj = LfsObject(b"x" * 10)
    assert parse_pointer(obj.pointer()) == (obj.oid, 10)
    assert parse_pointer(b"version https://git-lfs.github.com/spec/v1\noid sha256:xyz\n") is None
    assert parse_pointer(obj.pointer() + b"x" * 1024) is None  # too long to be a pointer
    assert parse_pointer(b"hello\n") is None
