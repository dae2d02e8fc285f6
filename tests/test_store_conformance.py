"""What EVERY store backend must do (issue 21): one suite, run against the local folder, S3
(moto_server over HTTP) and the in-memory store. Backend-specific behaviour (the local
sidecars, S3's multipart parts, request counts) stays in test_store.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bulkbackup.config import StoreSettings
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.store import ObjectInfo, Store, open_store
from bulkbackup.store.base import METADATA_LIMIT_BYTES
from bulkbackup.store.local import LocalStore
from bulkbackup.store.memory import MemoryStore
from tests.helpers import read

PAGE = 3  # a small page size, so that every listing below spans several pages


@pytest.fixture(params=["local", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    settings = StoreSettings(url=str(tmp_path / "store"), list_page_size=PAGE)
    s: Store
    if request.param == "memory":
        s = MemoryStore(settings)
    else:
        if request.param == "s3":
            request.getfixturevalue("s3_endpoint")  # an emptied moto_server, env set
            settings = StoreSettings(url="s3://conformance", list_page_size=PAGE)
        s = open_store(settings)
    yield s
    s.close()


class Refused(Exception):
    """What a before_commit raises when the write must not land."""


def refuse() -> None:
    raise Refused("lock lost")


def keys(listing: Iterator[ObjectInfo]) -> list[str]:
    return [info.key for info in listing]


def put_all(store: Store, names: list[str]) -> None:
    for key in names:
        store.put_bytes(key, key.encode(), {})


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 300])
def test_put_bytes_round_trip(store: Store, data: bytes) -> None:
    store.put_bytes("u/r.bundle", data, {})
    head = store.head("u/r.bundle")
    assert head is not None and head.size == len(data)
    assert head.last_modified.tzinfo is not None
    assert read(store, "u/r.bundle") == data and store.read_bytes("u/r.bundle") == data


def test_put_file_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bundle"
    src.write_bytes(b"file data" * 1000)
    store.put_file("u/r.bundle", src, {"LastSync": "t"})
    assert read(store, "u/r.bundle") == src.read_bytes()
    with pytest.raises(StoreError):
        store.put_file("u/gone.bundle", tmp_path / "missing", {})
    assert store.head("u/gone.bundle") is None


def test_a_put_replaces_data_and_all_metadata(store: Store) -> None:
    store.put_bytes("u", b"old data", {"LastSync": "1", "Error": "boom"})
    store.put_bytes("u", b"new", {"LastSync": "2"})
    head = store.head("u")
    assert head is not None and head.size == 3 and head.metadata == {"lastsync": "2"}
    assert read(store, "u") == b"new"


def test_odd_keys_round_trip(store: Store) -> None:
    odd = ["ñandú", "ñandú/Ωmega.bundle", "50%off", "50%off/%object", "50%off/x%meta",
           "50%off/%tmp-1", "50%off/%25", "q/%25", "q/%", "sp ace/a b", ".dot",
           "u/.github.bundle"]
    put_all(store, odd)
    for key in odd:
        head = store.head(key)
        assert head is not None and head.size == len(key.encode()), key
        assert read(store, key) == key.encode(), key
    assert sorted(keys(store.list())) == sorted(odd)
    assert sorted(keys(store.list("50%off/"))) == sorted(k for k in odd
                                                         if k.startswith("50%off/"))
    assert sorted(keys(store.list_top())) == [".dot", "50%off", "ñandú"]


# -- metadata ----------------------------------------------------------------------------------


def test_metadata_round_trip_read_ignoring_case(store: Store) -> None:
    meta = {"LastSync": "2026-11-28T17:00:00Z", "SyncdRepos": "3", "Error": "", "x-custom": "v"}
    store.put_bytes("u", b"[]", meta)
    head = store.head("u")
    assert head is not None
    assert head.metadata == {k.lower(): v for k, v in meta.items()}
    assert head.get("LastSync") == head.get("lastsync") == head.get("LASTSYNC") == meta["LastSync"]
    assert head.get("Error", "unset") == "" and head.get("PushedAt", "unset") == "unset"
    assert abs(head.last_modified - datetime.now(UTC)) < timedelta(minutes=5)


def test_metadata_is_cleaned_or_refused(store: Store) -> None:
    store.put_bytes("u", b"", {"Error": "line one\nline two ñ"})
    head = store.head("u")
    assert head is not None
    assert head.get("Error") == "line one line two \\xf1"  # one ASCII line
    with pytest.raises(StoreError):
        store.put_bytes("v", b"", {"bad name": "x"})
    with pytest.raises(StoreError):
        store.put_bytes("v", b"", {"LastSync": "t" * 3000})
    with pytest.raises(StoreError):  # no value is shortened: the store knows no field names
        store.put_bytes("v", b"", {"LastSync": "t", "Error": "e" * 3000})
    assert store.head("v") is None
    with pytest.raises(StoreError):
        store.replace_metadata("u", {"Error": "e" * 3000})
    head = store.head("u")
    assert head is not None and head.get("Error") == "line one line two \\xf1"


def test_metadata_over_the_limit_is_refused_whole(store: Store) -> None:
    """The store knows no field names: it cuts nothing; metadata over the limit is refused,
    on a put and on a metadata replace, and nothing changes; under it, a value with line
    breaks is stored as one ASCII line."""
    note = ("clone failed: ñ\nfatal: line two\t" * 200)[:5000]
    with pytest.raises(StoreError, match="exceeds the store limit"):
        store.put_bytes("octocat/x.bundle", b"", {"LastSync": "t", "Note": note})
    assert store.head("octocat/x.bundle") is None
    short = note[:300]
    store.put_bytes("octocat/x.bundle", b"", {"LastSync": "t", "Note": short})
    head = store.head("octocat/x.bundle")
    assert head is not None and head.size == 0
    assert head.get("Note").isascii() and "\n" not in head.get("Note")
    assert head.get("Note").startswith("clone failed: ")
    with pytest.raises(StoreError, match="exceeds the store limit"):
        store.replace_metadata("octocat/x.bundle", {"Note": note})
    head = store.head("octocat/x.bundle")
    assert head is not None and head.get("LastSync") == "t"
    at_limit = {"LastSync": "t", "Note": "n" * (METADATA_LIMIT_BYTES - len("LastSynctNote"))}
    store.replace_metadata("octocat/x.bundle", at_limit)
    head = store.head("octocat/x.bundle")
    assert head is not None and len(head.get("Note")) == len(at_limit["Note"])


# -- missing objects ---------------------------------------------------------------------------


def test_missing_objects(store: Store) -> None:
    assert store.head("nobody") is None and store.head("nobody/x.bundle") is None
    for start, end in ((0, None), (0, 0), (5, 10)):
        with pytest.raises(NotFound):
            store.open("nobody/x.bundle", start, end)
    with pytest.raises(NotFound):
        store.replace_metadata("nobody/x.bundle", {"LastSync": "t"})
    with pytest.raises(NotFound):
        store.copy("nobody/x.bundle", "nobody/y.bundle")
    assert store.head("nobody/y.bundle") is None
    store.delete("nobody/x.bundle")  # deleting what is not there is not an error
    assert store.local_path("nobody/x.bundle") is None


# -- ranged reads ------------------------------------------------------------------------------


def test_ranged_reads_are_clamped(store: Store) -> None:
    data = bytes(range(256)) * 40  # 10 240 bytes
    store.put_bytes("u/r.zip", data, {})
    for start, end in ((0, None), (0, 10), (100, 356), (10_000, None), (10_230, 20_000),
                       (10_240, None), (20_000, None), (20_000, 30_000), (5, 5), (0, 0)):
        assert read(store, "u/r.zip", start, end) == data[start:end], (start, end)
    for start, end in ((-1, None), (10, 5)):
        with pytest.raises(StoreError):
            store.open("u/r.zip", start, end)


def test_ranged_reads_of_an_empty_object(store: Store) -> None:
    store.put_bytes("u/empty", b"", {})
    for start, end in ((0, None), (0, 10), (5, None)):
        assert read(store, "u/empty", start, end) == b"", (start, end)


# -- listings ----------------------------------------------------------------------------------

# Names whose byte order differs from case-insensitive and folder order.
FILL = ["a", "a/R2.bundle", "a/r-3.bundle", "a/r1.bundle", "a/r1.bundle.zip", "a/r1.zip",
        "a-b", "a-b/x.bundle", "b/only.bundle", "zz", "zz/Z.bundle", "zz/ñ.bundle"]


def assert_listing_order(store: Store, listed: list[str], expected: list[str]) -> None:
    """Byte order of keys; a backend that is not byte_ordered still lists a user's own object
    first, then every key below it together, in byte order."""
    assert sorted(listed) == sorted(expected)
    if store.byte_ordered:
        assert listed == sorted(expected, key=lambda k: k.encode())
        return
    for user in {k.partition("/")[0] for k in expected}:
        mine = [i for i, k in enumerate(listed) if k.partition("/")[0] == user]
        assert mine == list(range(mine[0], mine[0] + len(mine))), user  # together
        below = sorted((k for k in expected if k.startswith(user + "/")), key=str.encode)
        assert [listed[i] for i in mine] == ([user] if user in expected else []) + below


def test_listing_order(store: Store) -> None:
    put_all(store, FILL)
    listing = list(store.list())
    assert_listing_order(store, [i.key for i in listing], FILL)
    assert all(i.size == len(i.key.encode()) and i.last_modified.tzinfo for i in listing)


def test_listing_by_prefix(store: Store) -> None:
    put_all(store, FILL)
    assert keys(store.list("a/")) == [k for k in FILL if k.startswith("a/")]
    assert keys(store.list("a/r1")) == ["a/r1.bundle", "a/r1.bundle.zip", "a/r1.zip"]
    assert_listing_order(store, keys(store.list("a")), [k for k in FILL if k.startswith("a")])
    assert keys(store.list("zz/")) == ["zz/Z.bundle", "zz/ñ.bundle"]
    for nothing in ("nobody/", "a/r1.zip/", "../", "a//", "A/"):
        assert keys(store.list(nothing)) == [], nothing


def test_shallow_listing(store: Store) -> None:
    put_all(store, ["s", "s/a.bundle", "s/a.bundle.d/c1/000001.bundle", "s/b.zip",
                    "s/b.bundle.d/c1/000000.bundle", "s/c/d/e.bundle", "s/z.bundle"])
    assert keys(store.list("s/", shallow=True)) == ["s/a.bundle", "s/b.zip", "s/z.bundle"]
    assert keys(store.list("s/a.bundle.d/", shallow=True)) == []
    assert keys(store.list("s/a.bundle.d/c1/", shallow=True)) == ["s/a.bundle.d/c1/000001.bundle"]
    assert len(keys(store.list("s/"))) == 6


@pytest.mark.parametrize("count", [PAGE * 3, PAGE * 3 + 1, PAGE * 2 - 1])
def test_listing_pages_lose_and_repeat_nothing(store: Store, count: int) -> None:
    names = [f"p/{n:03d}.bundle" for n in range(count)] + ["p", "q/after.bundle", "o/before"]
    put_all(store, names)
    assert keys(store.list("p/")) == [f"p/{n:03d}.bundle" for n in range(count)]
    assert keys(store.list("p/", shallow=True)) == [f"p/{n:03d}.bundle" for n in range(count)]
    assert_listing_order(store, keys(store.list()), names)


def test_listing_pages_of_a_shallow_listing_with_deep_folders(store: Store) -> None:
    # Many keys below folders between the shallow ones: no shallow key may be skipped.
    names = ["f/a"] + [f"f/b/{n}" for n in range(PAGE * 2)] + ["f/c"] + \
        [f"f/d/{n}/x" for n in range(PAGE * 2)] + ["f/e"]
    put_all(store, names)
    assert keys(store.list("f/", shallow=True)) == ["f/a", "f/c", "f/e"]


def test_list_top_is_the_top_level_keys(store: Store) -> None:
    put_all(store, FILL + [f"t{n}" for n in range(PAGE * 2)])
    top = keys(store.list_top())
    expected = ["a", "a-b", "zz"] + [f"t{n}" for n in range(PAGE * 2)]
    assert sorted(top) == sorted(expected)
    if store.byte_ordered:
        assert top == sorted(expected)
    assert all(i.last_modified.tzinfo is not None for i in store.list_top())
    assert sorted(keys(store.list_top("a"))) == ["a", "a-b"]
    assert keys(store.list_top("b")) == []  # a folder without a user object


def test_list_top_with_a_slash_in_the_prefix_is_empty(store: Store) -> None:
    """No top-level key has a '/': a prefix with one matches none (S3's ListObjectsV2 with a
    delimiter would list the keys directly below `a/`)."""
    put_all(store, FILL)
    assert keys(store.list_top("a/")) == []
    assert keys(store.list_top("a/r")) == []


def test_a_listing_is_streamed(store: Store) -> None:
    put_all(store, FILL)
    listing = store.list()
    assert isinstance(listing, Iterator)
    assert next(listing).key in FILL
    listing.close()  # type: ignore[attr-defined]  # a generator: stops its paging


# -- copy, replace_metadata, delete ------------------------------------------------------------


def test_copy_keeps_data_and_metadata(store: Store) -> None:
    store.put_bytes("u/r.bundle", b"base data", {"Chain": "c1", "Increments": "3"})
    dest = "u/r.bundle.d/c1/000000.bundle"
    store.copy("u/r.bundle", dest)
    head = store.head(dest)
    assert head is not None and head.size == 9 and read(store, dest) == b"base data"
    assert head.metadata == {"chain": "c1", "increments": "3"}
    # The copy is its own object: replacing or deleting the source leaves it as it was.
    store.put_bytes("u/r.bundle", b"new", {"Chain": "c2"})
    store.delete("u/r.bundle")
    assert read(store, dest) == b"base data"
    # A copy onto an existing key replaces it whole.
    store.put_bytes("u/other", b"other data", {"LastSync": "t"})
    store.copy(dest, "u/other")
    head = store.head("u/other")
    assert head is not None and head.metadata == {"chain": "c1", "increments": "3"}
    assert read(store, "u/other") == b"base data"


def test_replace_metadata_keeps_data(store: Store) -> None:
    data = bytes(range(256)) * 100
    store.put_bytes("u/r.bundle", data, {"LastSync": "1", "PushedAt": "p", "Error": "boom"})
    store.replace_metadata("u/r.bundle", {"LastSync": "2", "VerifiedAt": "v"})
    head = store.head("u/r.bundle")
    assert head is not None and head.size == len(data)
    assert head.metadata == {"lastsync": "2", "verifiedat": "v"}
    assert read(store, "u/r.bundle") == data


def test_copy_onto_itself_keeps_the_object(store: Store) -> None:
    """Copying a key onto itself changes nothing, but is fenced and needs the key (S3 refuses
    a CopyObject onto itself that changes nothing: the backend does no request for it)."""
    store.put_bytes("u/a", b"data", {"LastSync": "t"})
    calls: list[str] = []
    store.copy("u/a", "u/a", before_commit=lambda: calls.append("copy"))
    assert calls == ["copy"]
    head = store.head("u/a")
    assert head is not None and head.metadata == {"lastsync": "t"}
    assert read(store, "u/a") == b"data"
    with pytest.raises(Refused):
        store.copy("u/a", "u/a", before_commit=refuse)
    with pytest.raises(NotFound):
        store.copy("u/missing", "u/missing")
    assert keys(store.list()) == ["u/a"]


def test_delete_then_head_is_none(store: Store) -> None:
    put_all(store, ["u", "u/r.bundle", "u/r.bundle.d/c1/000000.bundle"])
    store.delete("u/r.bundle.d/c1/000000.bundle")
    assert store.head("u/r.bundle.d/c1/000000.bundle") is None
    with pytest.raises(NotFound):
        store.open("u/r.bundle.d/c1/000000.bundle")
    assert keys(store.list("u/")) == ["u/r.bundle"]
    store.delete("u")
    assert store.head("u") is None and store.head("u/r.bundle") is not None
    assert keys(store.list_top()) == []


# -- the fence ---------------------------------------------------------------------------------


def test_a_refused_commit_changes_nothing(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "new"
    src.write_bytes(b"new")
    with pytest.raises(Refused):
        store.put_bytes("u/new.bundle", b"x", {}, before_commit=refuse)
    store.put_bytes("u/a.bundle", b"old", {"LastSync": "old"})
    writes: list[Callable[[], object]] = [
        lambda: store.put_bytes("u/a.bundle", b"new", {}, before_commit=refuse),
        lambda: store.put_file("u/a.bundle", src, {}, before_commit=refuse),
        lambda: store.replace_metadata("u/a.bundle", {}, before_commit=refuse),
        lambda: store.copy("u/a.bundle", "u/b.bundle", before_commit=refuse),
        lambda: store.delete("u/a.bundle", before_commit=refuse)]
    for write in writes:
        with pytest.raises(Refused):
            write()
    head = store.head("u/a.bundle")
    assert head is not None and head.metadata == {"lastsync": "old"}
    assert read(store, "u/a.bundle") == b"old"
    assert keys(store.list()) == ["u/a.bundle"]


def test_before_commit_is_called_once_per_write(store: Store, tmp_path: Path) -> None:
    calls: list[str] = []
    src = tmp_path / "f"
    src.write_bytes(b"f")
    store.put_bytes("u/a", b"a", {}, before_commit=lambda: calls.append("put_bytes"))
    store.put_file("u/b", src, {}, before_commit=lambda: calls.append("put_file"))
    store.replace_metadata("u/a", {}, before_commit=lambda: calls.append("replace"))
    store.copy("u/a", "u/c", before_commit=lambda: calls.append("copy"))
    store.delete("u/c", before_commit=lambda: calls.append("delete"))
    assert calls == ["put_bytes", "put_file", "replace", "copy", "delete"]


# -- keys --------------------------------------------------------------------------------------

INVALID = ["", "/a", "a/", "a//b", "a/../b", "..", ".", "a/./b", "a\x00b"]


@pytest.mark.parametrize("key", INVALID)
def test_invalid_keys_refused(store: Store, key: str, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    store.put_bytes("u", b"x", {})
    ops: list[Callable[[], object]] = [
        lambda: store.put_bytes(key, b"x", {}), lambda: store.put_file(key, src, {}),
        lambda: store.head(key), lambda: store.open(key),
        lambda: store.replace_metadata(key, {}), lambda: store.delete(key),
        lambda: store.copy(key, "u/copy"), lambda: store.copy("u", key)]
    for op in ops:
        with pytest.raises(StoreError) as info:
            op()
        assert not isinstance(info.value, NotFound)  # refused, not looked for
    assert keys(store.list()) == ["u"]


def test_a_key_below_another_key(store: Store) -> None:
    """`u/r` and `u/r/x` (a key below a key that is not a user's): the archive layout never
    makes such a pair (test_store.py: test_layout_never_puts_a_key_below_another), so the
    contract leaves it to the backend. S3 keys are names: both are objects (and the memory
    store, S3's model). A local key is a path: `u/r` is a file, not a folder, so the local
    store refuses the second write either way round, changing nothing. Checking it on S3
    would cost a request per write."""
    store.put_bytes("u/r", b"file", {})
    store.put_bytes("v/r/x", b"below", {})
    if isinstance(store, LocalStore):
        with pytest.raises(StoreError, match="a parent key is an object"):
            store.put_bytes("u/r/x", b"below", {})
        with pytest.raises(StoreError, match="keys exist below it"):
            store.put_bytes("v/r", b"file", {})
        assert sorted(keys(store.list())) == ["u/r", "v/r/x"]
    else:
        store.put_bytes("u/r/x", b"below", {})
        store.put_bytes("v/r", b"file", {})
        assert keys(store.list()) == ["u/r", "u/r/x", "v/r", "v/r/x"]
    for key in keys(store.list()):
        assert read(store, key) == (b"file" if key.endswith("/r") else b"below")


def test_clean_stale_temp_on_a_clean_store(store: Store) -> None:
    assert store.clean_stale_temp() == 0


def test_writes_from_several_threads_all_land(store: Store) -> None:
    """One instance used by several threads (a worker's pool): no write is lost."""
    def write(n: int) -> None:
        for i in range(10):
            key = f"t{n}/{i:02d}"
            store.put_bytes(key, key.encode(), {"LastSync": key})
            if i % 3 == 0:
                store.delete(key)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    expected = [f"t{n}/{i:02d}" for n in range(4) for i in range(10) if i % 3]
    assert_listing_order(store, keys(store.list()), expected)
    for key in expected:
        head = store.head(key)
        assert head is not None and head.get("LastSync") == key
