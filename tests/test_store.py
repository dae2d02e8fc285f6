"""The durable store backends, each against the real thing: a folder, and moto_server over HTTP."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkbackup import config
from bulkbackup.archive import layout
from bulkbackup.archive.layout import (
    REASON_MAX_CHARS,
    UNPRINTABLE_REASON,
    Kind,
    StoreKey,
    UserCounts,
    short_reason,
)
from bulkbackup.archive.metadata import fitted
from bulkbackup.backup.results import PARTIAL_ERROR, error_kind
from bulkbackup.config import StoreSettings
from bulkbackup.errors import ConfigError, StoreError
from bulkbackup.redact import add_secrets
from bulkbackup.store import Store, clean_stale_temp, open_store
from bulkbackup.store.base import METADATA_LIMIT_BYTES, Head, clean_metadata, content_type
from bulkbackup.store.local import LocalStore
from bulkbackup.store.s3 import S3Store
from tests.helpers import ROOT, read

MIB = 1024 * 1024


def is_s3(store: Store) -> bool:
    return isinstance(store, S3Store)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(StoreSettings(url=store_url, list_page_size=7, multipart_threshold_mb=5,
                                 multipart_part_mb=5))
    yield s
    s.close()


def keys_of(listing: Iterator[Any]) -> list[str]:
    return [info.key for info in listing]


class Refused(Exception):
    """What a before_commit raises when the write must not land (a lock lost)."""


def refuse() -> None:
    raise Refused("lock lost")


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith("%tmp-")]


# -- round trips -------------------------------------------------------------------------------


def test_open_store_from_config(clean_env: None, store_url: str) -> None:
    store = open_store(config.load().store)
    try:
        assert isinstance(store, S3Store if store_url.startswith("s3://") else LocalStore)
        store.put_bytes("octocat", b"[]", {"LastSync": "2026-11-28T17:00:00Z"})
        assert store.read_bytes("octocat") == b"[]"
    finally:
        store.close()


def test_put_bytes_and_head_metadata(store: Store) -> None:
    before = store.request_count
    store.put_bytes("octocat", b'[{"name": "Hello-World"}]',
                    {"LastSync": "2026-11-28T17:00:00Z", "SyncdRepos": "1", "Error": ""})
    head = store.head("octocat")
    assert head is not None
    assert head.size == len(b'[{"name": "Hello-World"}]')
    assert head.metadata == {"lastsync": "2026-11-28T17:00:00Z", "syncdrepos": "1", "error": ""}
    assert head.get("lastsync") == head.get("LastSync") == "2026-11-28T17:00:00Z"
    assert head.get("ReportedRepos", "none") == "none"
    assert head.last_modified.tzinfo is not None
    assert abs(head.last_modified - datetime.now(UTC)) < timedelta(minutes=5)
    with store.open("octocat") as f:
        assert f.read() == b'[{"name": "Hello-World"}]'
    assert store.request_count >= before + 3


def test_s3_replace_metadata_keeps_the_content_type(s3_endpoint: str) -> None:
    """CopyObject with MetadataDirective=REPLACE would drop the ContentType unless given again
    (the rest of replace_metadata: test_store_conformance.py)."""
    store = open_store(StoreSettings(url="s3://github.com"))
    try:
        store.put_bytes("octocat/Hello-World.bundle", b"data", {"LastSync": "1"})
        store.replace_metadata("octocat/Hello-World.bundle", {"LastSync": "2"})
        assert isinstance(store, S3Store)
        raw = store._client.head_object(Bucket=store.bucket, Key="octocat/Hello-World.bundle")
        assert raw["ContentType"] == "application/x-git-bundle"
        assert raw["Metadata"] == {"lastsync": "2"}
    finally:
        store.close()


def test_put_file_multipart(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bundle"
    digest = hashlib.sha256()
    with src.open("wb") as f:
        for _ in range(12):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            f.write(chunk)
    store.put_file("octocat/big.bundle", src, {"LastSync": "t"})
    head = store.head("octocat/big.bundle")
    assert head is not None and head.size == 12 * MIB and head.get("LastSync") == "t"
    with store.open("octocat/big.bundle") as f:
        got = hashlib.sha256()
        while chunk := f.read(MIB):
            got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()
    if isinstance(store, S3Store):
        raw = store._client.head_object(Bucket=store.bucket, Key="octocat/big.bundle")
        assert raw["ETag"].strip('"').endswith("-3")  # three 5 MiB parts: multipart
    else:
        assert isinstance(store, LocalStore)
        assert (store.root / "octocat" / "big.bundle").stat().st_size == 12 * MIB


# -- listings ----------------------------------------------------------------------------------

USERS = ["a", "a-b", "b", "c", "zz"]


def fill(store: Store) -> list[str]:
    """25 keys over several users, with names whose byte order differs from folder order."""
    keys: list[str] = []
    for user in USERS:
        keys.append(user)
        keys += [f"{user}/{r}" for r in ("r1.bundle", "r1.zip", "R2.bundle", "r-3.bundle")]
    keys.remove("c")  # a user folder without a user object
    keys.append("a-b/r1.bundle.zip")
    for key in keys:
        store.put_bytes(key, key.encode(), {"LastSync": "t"})
    assert len(keys) == 25
    return keys


def test_list_pages_and_order(store: Store) -> None:
    keys = fill(store)
    before = store.request_count
    listing = list(store.list())
    assert sorted(info.key for info in listing) == sorted(keys)
    assert all(info.size == len(info.key.encode()) for info in listing)
    if is_s3(store):
        assert store.byte_ordered
        assert [i.key for i in listing] == sorted(keys, key=lambda k: k.encode())
    else:
        assert not store.byte_ordered
        # Each user's keys come together: its own object first, then the rest in key order.
        users = [i.key.partition("/")[0] for i in listing]
        assert sorted(set(users)) == USERS
        for user in USERS:
            mine = [i.key for i in listing if i.key.partition("/")[0] == user]
            start = users.index(user)
            assert [i.key for i in listing[start:start + len(mine)]] == mine
            rest = [k for k in mine if k != user]
            assert mine == ([user] if user != "c" else []) + sorted(rest)
    # Both count a listing as S3 does: one request per page (25 keys in pages of 7).
    assert store.request_count - before == 4


# -- names -------------------------------------------------------------------------------------

def test_local_odd_names_are_plain_files(local_root: Path) -> None:
    """Operators browse the folder and `git clone` bundles straight from it: a key is a path,
    '%' escaped as '%25' (the round trips of odd names: test_store_conformance.py)."""
    store = LocalStore(StoreSettings(url=str(local_root)))
    for key in ("ñandú/Ωmega.bundle", "octocat/.github.bundle", "50%off", "50%off/%object"):
        store.put_bytes(key, key.encode(), {})
    assert (local_root / "ñandú" / "Ωmega.bundle").read_bytes() == "ñandú/Ωmega.bundle".encode()
    assert (local_root / "octocat" / ".github.bundle").is_file()
    assert (local_root / "50%25off" / "%25object").read_bytes() == b"50%off/%object"
    assert (local_root / "50%25off" / "%object").read_bytes() == b"50%off"


def test_clean_metadata_limit() -> None:
    with pytest.raises(StoreError):
        clean_metadata({"LastSync": "t", "Error": "é\n" * 5000})
    out = clean_metadata(fitted({"LastSync": "t", "Error": "é\n" * 5000}))
    assert sum(len(k) + len(v) for k, v in out.items()) <= METADATA_LIMIT_BYTES
    assert len("".join(f"{k}{v}" for k, v in out.items()).encode()) <= METADATA_LIMIT_BYTES
    assert fitted({"LastSync": "t", "Error": "short"}) == {"LastSync": "t", "Error": "short"}
    assert fitted({"LastSync": "t" * 3000, "Error": "x" * 10})["Error"] == "x" * 10  # no room
    with pytest.raises(StoreError):
        clean_metadata({"LastSync": "t" * 3000})
    with pytest.raises(StoreError):
        clean_metadata({"bad name": "x"})


def test_long_error_is_refused_by_the_store_and_fitted_by_the_archive(store: Store) -> None:
    """The store knows no field names: metadata over the limit is refused whole; the
    archive cuts its Error to fit (metadata.fitted), on a put and on a metadata update."""
    error = ("clone failed: ñ\nfatal: line two\t" * 200)[:5000]
    meta = {"LastSync": "2026-11-28T17:00:00Z", "PushedAt": "x", "UpdatedAt": "y", "Error": error}
    with pytest.raises(StoreError, match="exceeds the store limit"):
        store.put_bytes("octocat/x.bundle", b"", meta)
    assert store.head("octocat/x.bundle") is None
    store.put_bytes("octocat/x.bundle", b"", fitted(meta))
    head = store.head("octocat/x.bundle")
    assert head is not None and head.size == 0
    stored = head.get("Error")
    assert stored.startswith("clone failed: ") and stored.endswith("...")
    assert stored.isascii() and "\n" not in stored
    assert sum(len(k) + len(v) for k, v in head.metadata.items()) == METADATA_LIMIT_BYTES
    assert head.get("LastSync") == "2026-11-28T17:00:00Z"
    with pytest.raises(StoreError):
        store.replace_metadata("octocat/x.bundle", {"Error": error})
    store.replace_metadata("octocat/x.bundle", layout.updated_metadata(head, {"Error": error}))
    head = store.head("octocat/x.bundle")
    assert head is not None and head.get("error").endswith("...")
    assert head.get("PushedAt") == "x"


# -- missing, ranges, refused commits ----------------------------------------------------------


def no_leftovers(store: Store) -> None:
    """No temp file (local), no pending multipart upload (S3)."""
    if isinstance(store, S3Store):
        uploads = store._client.list_multipart_uploads(Bucket=store.bucket)
        assert not uploads.get("Uploads")  # the refused multipart upload was aborted
    else:
        assert isinstance(store, LocalStore)
        assert tmp_files(store.root) == []


def big_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / f"f{size}"
    path.write_bytes(os.urandom(size))
    return path


def test_refused_commit_leaves_nothing(store: Store, tmp_path: Path) -> None:
    """A before_commit that raises (the lock is lost): nothing visible, nothing left over."""
    calls: list[str] = []

    def refuse_once_uploaded() -> None:
        calls.append("confirm")
        refuse()

    with pytest.raises(Refused):
        store.put_bytes("octocat", b"[]", {"LastSync": "t"}, before_commit=refuse_once_uploaded)
    for size in (1000, 11 * MIB):  # a single PUT, and a multipart upload on S3
        with pytest.raises(Refused):
            store.put_file("octocat/half.bundle", big_file(tmp_path, size), {"LastSync": "t"},
                           before_commit=refuse_once_uploaded)
    assert calls == ["confirm"] * 3  # once each, after the data was uploaded
    assert store.head("octocat/half.bundle") is None and store.head("octocat") is None
    assert keys_of(store.list()) == []
    no_leftovers(store)
    with pytest.raises(StoreError):
        store.put_file("octocat/gone.bundle", tmp_path / "missing", {})
    assert store.head("octocat/gone.bundle") is None


def test_refused_commit_keeps_the_object_in_place(store: Store, tmp_path: Path) -> None:
    store.put_bytes("octocat/a.bundle", b"old", {"LastSync": "old"})
    with pytest.raises(Refused):
        store.put_bytes("octocat/a.bundle", b"new", {"LastSync": "new"}, before_commit=refuse)
    for size in (1000, 11 * MIB):
        with pytest.raises(Refused):
            store.put_file("octocat/a.bundle", big_file(tmp_path, size), {"LastSync": "new"},
                           before_commit=refuse)
    with pytest.raises(Refused):
        store.replace_metadata("octocat/a.bundle", {"LastSync": "new"}, before_commit=refuse)
    head = store.head("octocat/a.bundle")
    assert head is not None and head.metadata == {"lastsync": "old"} and head.size == 3
    assert read(store, "octocat/a.bundle") == b"old"
    no_leftovers(store)
    # A before_commit that passes lets each write land.
    confirmed: list[int] = []
    store.put_file("octocat/a.bundle", big_file(tmp_path, 11 * MIB), {"LastSync": "new"},
                   before_commit=lambda: confirmed.append(1))
    store.replace_metadata("octocat/a.bundle", {"LastSync": "newer"},
                           before_commit=lambda: confirmed.append(1))
    head = store.head("octocat/a.bundle")
    assert head is not None and head.size == 11 * MIB and head.get("LastSync") == "newer"
    assert confirmed == [1, 1]
    no_leftovers(store)


def test_s3_missing_bucket_not_created(s3_endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"bucket nope\.example does not exist .*create_bucket"):
        S3Store(StoreSettings(url="s3://nope.example", create_bucket=False))


# -- local layout and crash consistency --------------------------------------------------------


class Crash(BaseException):
    """The process dies here: nothing after this point runs."""


class CrashBeforeRename(LocalStore):
    def _write_sidecar(self, data: Path, doc: Mapping[str, Any],
                       before_commit: Callable[[], None]) -> None:
        super()._write_sidecar(data, doc, before_commit)
        # Keep the temp file's inode alive as a real crash would leave it on disk.
        for tmp in tmp_files(self.root):
            os.link(tmp, tmp.with_name(f"%tmp-survivor-{tmp.name}"))
        raise Crash


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    return tmp_path / "backup" / "github.com"


def test_local_crash_between_sidecar_and_rename(local_root: Path) -> None:
    store = LocalStore(StoreSettings(url=str(local_root)))
    store.put_bytes("octocat/a.bundle", b"old data", {"LastSync": "old", "Error": ""})
    crashing = CrashBeforeRename(StoreSettings(url=str(local_root)))
    with pytest.raises(Crash):
        crashing.put_bytes("octocat/a.bundle", b"new data!", {"LastSync": "new"})
    # The sidecar already describes the new data, but the old data is still in place.
    head = store.head("octocat/a.bundle")
    assert head is not None and head.size == len(b"old data")
    assert head.metadata == {"lastsync": "old", "error": ""}
    assert keys_of(store.list()) == ["octocat/a.bundle"]  # the survivor temp file is hidden
    # A new key that crashes before its first rename does not exist at all.
    with pytest.raises(Crash):
        crashing.put_bytes("octocat/b.bundle", b"b", {"LastSync": "new"})
    assert store.head("octocat/b.bundle") is None
    assert keys_of(store.list("octocat/")) == ["octocat/a.bundle"]
    # The next complete write wins.
    store.put_bytes("octocat/a.bundle", b"newer", {"LastSync": "newer"})
    head = store.head("octocat/a.bundle")
    assert head is not None and head.get("lastsync") == "newer" and head.size == 5


def test_local_sidecar_matches_inode(local_root: Path) -> None:
    store = LocalStore(StoreSettings(url=str(local_root)))
    store.put_bytes("octocat", b"[]", {"LastSync": "1"})
    store.put_bytes("octocat", b"[1]", {"LastSync": "2"})
    import json

    doc = json.loads((local_root / "octocat" / "%object%meta").read_text())
    ino = (local_root / "octocat" / "%object").stat().st_ino
    assert doc["cur"]["ino"] == ino and doc["cur"]["size"] == 3
    assert doc["cur"]["meta"] == {"LastSync": "2"} and len(doc["cur"]["fp"]) == 32
    assert doc["prev"]["meta"] == {"LastSync": "1"}
    # Data replaced behind the store's back (no sidecar entry for it): no stale metadata,
    # even when the new file reuses the inode that `prev` names.
    (local_root / "octocat" / "%object").unlink()
    (local_root / "octocat" / "%object").write_bytes(b"[1, 2, 3]")
    head = store.head("octocat")
    assert head is not None and head.metadata == {}


def test_a_copied_local_store_keeps_every_objects_metadata(local_root: Path,
                                                           tmp_path: Path) -> None:
    """cp -r gives every file a new inode: the fingerprint ties the sidecars to the copies,
    also the one caught between its sidecar and its rename, with old and new of one size."""
    store = LocalStore(StoreSettings(url=str(local_root)))
    big = os.urandom(20_000)
    store.put_bytes("octocat/big.bundle", big, {"LastSync": "big"})
    store.put_bytes("octocat/a.bundle", b"old data", {"LastSync": "old"})
    store.replace_metadata("octocat/big.bundle", {"LastSync": "big2"})
    with pytest.raises(Crash):
        CrashBeforeRename(StoreSettings(url=str(local_root))).put_bytes(
            "octocat/a.bundle", b"new data", {"LastSync": "new"})
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(local_root), str(copy)], check=True)
    copied = LocalStore(StoreSettings(url=str(copy)))
    for key, lastsync in (("octocat/a.bundle", "old"), ("octocat/big.bundle", "big2")):
        head = copied.head(key)
        assert head is not None and head.get("lastsync") == lastsync, key
    copied.copy("octocat/big.bundle", "octocat/big2.bundle")
    head = copied.head("octocat/big2.bundle")
    assert head is not None and head.get("lastsync") == "big2"
    # A file of the same size put in place by hand is not the one the sidecar describes.
    (copy / "octocat" / "big.bundle").write_bytes(big[:-1] + bytes([big[-1] ^ 1]))
    head = copied.head("octocat/big.bundle")
    assert head is not None and head.metadata == {}
    # Nor is a FIFO in place of an empty object: it is not opened to wait for a writer.
    store.put_bytes("octocat/empty.bundle", b"", {"LastSync": "e"})
    (local_root / "octocat" / "empty.bundle").unlink()
    (local_root / "octocat" / "inode-taken").write_bytes(b"")  # the FIFO gets another inode
    os.mkfifo(local_root / "octocat" / "empty.bundle")
    store.put_bytes("octocat/empty.bundle", b"x", {"LastSync": "x"})
    head = store.head("octocat/empty.bundle")
    assert head is not None and head.get("lastsync") == "x"


def test_a_sidecar_without_fingerprints_matches_a_copy_by_an_unambiguous_size(
        local_root: Path) -> None:
    import json

    data = local_root / "octocat" / "a.bundle"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"12345")
    meta = data.with_name("a.bundle%meta")
    old = {"ino": 1, "size": 5, "meta": {"LastSync": "old"}}
    meta.write_text(json.dumps({"cur": old, "prev": None}))
    store = LocalStore(StoreSettings(url=str(local_root)))
    head = store.head("octocat/a.bundle")
    assert head is not None and head.get("lastsync") == "old"
    # Both entries of that size: which one is in place cannot be told, so neither is taken.
    meta.write_text(json.dumps({"cur": old, "prev": {**old, "ino": 2, "meta": {"LastSync": "p"}}}))
    head = store.head("octocat/a.bundle")
    assert head is not None and head.metadata == {}


def test_local_file_folder_conflicts(local_root: Path) -> None:
    store = LocalStore(StoreSettings(url=str(local_root)))
    store.put_bytes("a/b", b"x", {})
    with pytest.raises(StoreError, match="parent key"):
        store.put_bytes("a/b/c", b"y", {})
    store.put_bytes("d/e/f", b"y", {})
    with pytest.raises(StoreError, match="keys exist below"):
        store.put_bytes("d/e", b"x", {})
    assert store.head("d/e") is None
    assert sorted(keys_of(store.list())) == ["a/b", "d/e/f"]
    assert keys_of(store.list("d/e/")) == ["d/e/f"]
    assert tmp_files(local_root) == []
    assert store.head("a/b/c") is None  # below an object: missing, not an error
    assert store.head("d/e") is None  # a folder, not an object: missing too


def test_local_listing_skips_backend_files(local_root: Path) -> None:
    store = LocalStore(StoreSettings(url=str(local_root)))
    store.put_bytes("octocat/a.bundle", b"a", {})
    (local_root / "octocat" / "%tmp-deadbeef").write_bytes(b"partial")
    (local_root / "octocat" / "gone.bundle%meta").write_text("{}")
    (local_root / "%tmp-top").write_bytes(b"")
    (local_root / "stray-file").write_bytes(b"")
    assert keys_of(store.list()) == ["octocat/a.bundle"]
    assert keys_of(store.list_top()) == []


def test_local_request_count(local_root: Path) -> None:
    store = LocalStore(StoreSettings(url=str(local_root)))
    store.put_bytes("octocat", b"[]", {})
    store.head("octocat")
    store.replace_metadata("octocat", {"LastSync": "t"})
    read(store, "octocat")
    assert store.request_count == 4


# -- leftovers of killed writers ---------------------------------------------------------------

HOLD_AT_COMMIT = """
import sys, time
from bulkbackup.config import StoreSettings
from bulkbackup.store.local import LocalStore

def hold():
    print("ready", flush=True)
    time.sleep(600)

LocalStore(StoreSettings(url=sys.argv[1])).put_bytes("octocat/a.bundle", b"x" * 1000, {},
                                                     before_commit=hold)
"""


def writer_at_commit(root: Path) -> subprocess.Popen[str]:
    """A process in the middle of a local put (its temp files written), holding there."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AT_COMMIT, str(root)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_local_clean_stale_temp_removes_only_what_dead_writers_left(local_root: Path) -> None:
    store = LocalStore(StoreSettings(url=str(local_root)))
    dead, live = writer_at_commit(local_root), writer_at_commit(local_root)
    try:
        dead.kill()
        dead.wait(10)
        left = tmp_files(local_root)
        assert {p.parent.name for p in left} == {"%incoming"}
        assert len([p for p in left if f"-{dead.pid}-" in p.name]) == 2  # data and sidecar
        # Another host's: kept while recent (its writer may be alive), removed once a day old.
        other = local_root / "%incoming" / "%tmp-elsewhere-1-abc"
        old = local_root / "%incoming" / "%tmp-elsewhere-2-def"
        other.write_bytes(b"")
        old.write_bytes(b"")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        assert store.clean_stale_temp() == 3
        kept = tmp_files(local_root)
        assert sorted(p.name for p in kept if f"-{live.pid}-" not in p.name) == [other.name]
        assert len(kept) == 3  # the live writer's two files, untouched
        assert clean_stale_temp(StoreSettings(url=str(local_root))) == 0
    finally:
        live.kill()
        live.wait(10)
    assert store.clean_stale_temp() == 2
    assert store.head("octocat/a.bundle") is None


# -- the layout --------------------------------------------------------------------------------


def test_layout_builds_and_parses_keys() -> None:
    assert layout.user_key("octocat") == "octocat"
    assert layout.bundle_key("octocat", "a.b") == "octocat/a.b.bundle"
    assert layout.zip_key("octocat", "a.b") == "octocat/a.b.zip"
    assert layout.parse_key("octocat") == StoreKey("octocat", "", Kind.USER)
    assert layout.parse_key("octocat/a.b.bundle") == StoreKey("octocat", "a.b", Kind.BUNDLE)
    assert layout.parse_key("octocat/r1.bundle.zip") == StoreKey("octocat", "r1.bundle", Kind.ZIP)
    for other in ("octocat/x/y.bundle", "octocat/.bundle", "octocat/notes.txt"):
        assert layout.parse_key(other) == StoreKey("octocat", "", Kind.OTHER)
    assert layout.is_below("a/x.zip", "a") and not layout.is_below("a-b/x.zip", "a")
    assert [content_type(k) for k in ("a", "a/b.zip", "a/b.bundle", "a/b/c", "a/b.bundle.zip")
            ] == ["application/json", "application/zip", "application/x-git-bundle",
                  "application/octet-stream", "application/zip"]


def test_user_counts_round_trip_and_the_old_forms() -> None:
    counts = UserCounts(syncd=3, empty=1, failed=2, error=True, reported=7, reason="why: x y")
    assert counts.encode() == "3 1 2 1 7 why: x y"
    assert UserCounts.decode(counts.encode()) == counts
    assert UserCounts(3, 1, 2, False, 7, "ignored").encode() == "3 1 2 0 7"
    assert UserCounts.decode("3 1 2 0 7") == UserCounts(3, 1, 2, False, 7)
    # The older forms: without the reason (None: not known), and before ReportedRepos.
    assert UserCounts.decode("3 1 2 1 7") == UserCounts(3, 1, 2, True, 7, None)
    assert UserCounts.decode("3 1 2 0") == UserCounts(3, 1, 2, False, 0)
    assert UserCounts.decode("3 1 2 1") == UserCounts(3, 1, 2, True, 0, None)
    assert UserCounts.decode("3 1 2 1 7 ") == UserCounts(3, 1, 2, True, 7, None)
    assert UserCounts.decode("3 1 2 1 7  x\ny") == UserCounts(3, 1, 2, True, 7, "x y")
    assert UserCounts.decode("3 1 2 01 7") == UserCounts(3, 1, 2, True, 7, None)
    for bad in (None, "", "1 2 3", "1 2 3 1 reason", "a b c d", "1 -2 3 0 4", "1 2 3 2 4",
                "1 2 3 1 +4 x", "1 2 3 1 4\nx", "1 2 \u0663 0 4"):
        assert UserCounts.decode(bad) is None, bad


def test_a_reason_is_one_bounded_printable_line_without_tokens() -> None:
    add_secrets(["ghp_secret0123456789"])
    text = "clone failed:\n\tfatal: https://ghp_secret0123456789@github.com/x\r\x00\u202e!"
    reason = short_reason(text + " y" * 500)
    assert reason.startswith("clone failed: fatal: https://***@github.com/x !")
    assert len(reason) == REASON_MAX_CHARS and reason.endswith("...")
    assert short_reason("\n\x00") == UNPRINTABLE_REASON and short_reason("") == ""
    counts = UserCounts.decode(UserCounts(0, 0, 0, True, 0, text).encode())
    assert counts is not None and counts.reason == short_reason(text)


@hypothesis.settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["0", "1", "7", "01", "12", " ", "  ", "\n", "x", "+", "-",
                                 "\u0663", "\u00b2", "\t", "\x00", "why: "]), max_size=14),
       st.lists(st.sampled_from(["0", "1", "2", "7", "01", "", "x", "1\n"]), min_size=3,
                max_size=6))
def test_user_counts_decode_reads_what_its_slow_way_reads(pieces: list[str],
                                                          fields: list[str]) -> None:
    # decode() matches the written form in one regex, else parses the slow way: the same
    # answer for any text (old forms, stray spaces, non-ASCII digits, newlines).
    text = "".join(pieces)
    for written in (text, " ".join(fields), " ".join(fields) + " " + text,
                    f"3 1 2 1 7 {text}", f"3 1 2 0 7 {text}", f"3 1 2 1 {text}"):
        assert UserCounts.decode(written) == UserCounts._decode_any(written), repr(written)


def test_the_users_page_decodes_each_summary_once_and_keeps_a_bounded_few() -> None:
    from bulkbackup.web import users

    users._short_counts.cache_clear()
    short, long = "3 0 1 1 3 not found", "3 0 1 1 3 " + "x" * 100
    for _ in range(3):
        assert users._counts(short) == UserCounts.decode(short)
        assert users._counts(long) == UserCounts.decode(long)
        assert users._counts("not counts") is None and users._counts(None) is None
    assert users._counts(short) is users._counts(short)  # decoded once
    # The short one was decoded once, the long one never kept.
    assert users._short_counts.cache_info().currsize == 2  # `short` and "not counts"
    assert users._short_counts.cache_info().misses == 2
    for n in range(users._COUNTS_KEPT * 2 + 3):
        assert users._counts(f"{n} 0 0 0 {n}") == UserCounts(n, 0, 0, False, n, None)
    assert users._short_counts.cache_info().currsize <= users._COUNTS_KEPT


@hypothesis.settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**12), st.integers(0, 10**6), st.integers(0, 10**6), st.booleans(),
       st.integers(0, 10**6), st.text(max_size=400))
def test_user_counts_round_trip_any_reason(syncd: int, empty: int, failed: int, error: bool,
                                           reported: int, text: str) -> None:
    encoded = UserCounts(syncd, empty, failed, error, reported, text).encode()
    decoded = UserCounts.decode(encoded)
    assert decoded is not None and "\n" not in encoded and encoded.isprintable()
    assert (decoded.syncd, decoded.empty, decoded.failed, decoded.error, decoded.reported) == (
        syncd, empty, failed, error, reported)
    if error and text:
        assert decoded.reason == short_reason(text) and 0 < len(decoded.reason) <= 120
        assert UserCounts.decode(decoded.encode()) == decoded  # stable once shortened
    else:
        assert decoded.reason is None


@given(st.from_regex(r"[A-Za-z0-9-]{1,39}", fullmatch=True), st.integers(0, 10**6),
       st.text(max_size=300))
def test_a_shortened_reason_keeps_its_badge(login: str, n: int, rest: str) -> None:
    for text in (PARTIAL_ERROR.format(failed=n, reported=n) + rest,
                 f"user {login} not found on GitHub (404)",
                 f"user {login} not found on GitHub (NOT_FOUND)", "GitHub API failed: " + rest):
        assert error_kind(short_reason(text)) == error_kind(text)


def test_updated_metadata_hides_the_lower_casing() -> None:
    head = Head(size=1, last_modified=datetime.now(UTC),
                metadata={"lastsync": "t", "error": "old", "pushedat": "p"})
    assert layout.updated_metadata(head, {"Error": "new"}) == {
        "LastSync": "t", "Error": "new", "PushedAt": "p"}


def test_stats_does_not_import_the_backup_job() -> None:
    code = ("import sys, bulkbackup.passes.stats; "
            "print('bulkbackup.backup.user_backup' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


REPO_NAME = st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True)


@given(REPO_NAME, REPO_NAME, st.integers(0, 10**6 - 1))
def test_layout_never_puts_a_key_below_another(a: str, b: str, seq: int) -> None:
    """No key of the archive is a folder of another (but the user's own object): the local
    store could not hold both (test_store_conformance.py: test_a_key_below_another_key)."""
    chain = layout.chain_id(datetime(2026, 1, 1, tzinfo=UTC))
    made = [k for name in (a, b) for k in (
        layout.bundle_key("u", name), layout.zip_key("u", name),
        layout.part_key("u", name, chain, seq))]
    for key in made:
        assert not any(other.startswith(key + "/") for other in made), key


def test_layout_parts_of_a_chain() -> None:
    when = datetime(2026, 11, 29, 12, 0, 1, 5, tzinfo=UTC)
    chain = layout.chain_id(when)
    assert chain == "20261129T120001000005Z" and layout.chain_time(chain) == when
    key = layout.part_key("ann", "r.bundle", chain, 7)
    assert key == f"ann/r.bundle.bundle.d/{chain}/000007.bundle"
    assert layout.parse_key(key) == StoreKey("ann", "r.bundle", Kind.PART, chain, 7)
    # A repository named like a parts folder is still a repository.
    assert layout.parse_key("ann/x.bundle.d.bundle") == StoreKey("ann", "x.bundle.d",
                                                                 Kind.BUNDLE)
    for other in ("ann/r.bundle.d/notachain/000001.bundle", f"ann/r.bundle.d/{chain}/1.bundle",
                  f"ann/.bundle.d/{chain}/000001.bundle", f"ann/r.bundle.d/{chain}/x/y"):
        assert layout.parse_key(other).kind is Kind.OTHER
    with pytest.raises(ValueError):
        layout.part_key("ann", "r", "../x", 1)
    assert content_type(key) == "application/x-git-bundle"


def test_local_path_reads_in_place_only_on_the_local_store(store: Store) -> None:
    store.put_bytes("u/r.bundle", b"data", {})
    path = store.local_path("u/r.bundle")
    if is_s3(store):
        assert path is None
    else:
        assert path is not None and path.read_bytes() == b"data"
    assert store.local_path("u/missing.bundle") is None


