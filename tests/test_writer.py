"""The archive writer's decisions, without git or a forge (issue 21, the test pyramid): the
in-memory store (store/memory.py) behind the FencedStore a writer holds, archives built from
plain files. What needs a clone or a fetch (the increment, its proof) is in
test_increments.py and test_increment_proof.py, end to end."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bulkbackup.archive import chains, layout
from bulkbackup.archive.layout import EMPTY_REPOSITORY
from bulkbackup.archive.metadata import (
    CHAIN,
    ERROR,
    INCREMENTS,
    KEPT_SINCE,
    LAST_SYNC,
    PUSHED_AT,
    UPDATED_AT,
)
from bulkbackup.archive.stored import list_parts, repositories
from bulkbackup.archive.writer import (
    ArchiveWriter,
    Change,
    FullPlan,
    WriteOutcome,
    Written,
    plan_full,
)
from bulkbackup.config import RunSettings, Settings
from bulkbackup.git.gitops import Archive, GitWork
from bulkbackup.store import Head
from bulkbackup.store.base import METADATA_LIMIT_BYTES
from bulkbackup.store.fenced import FencedStore, StopFence
from bulkbackup.store.memory import MemoryStore
from bulkbackup.timeutil import format_rfc3339

KEY = layout.bundle_key("ann", "r")
T1, T2 = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"
OLD = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store() -> Iterator[FencedStore]:
    memory = MemoryStore()
    yield FencedStore(memory, StopFence())
    memory.close()


def writer(tmp_path: Path, keep_history_days: int = 365) -> ArchiveWriter:
    settings = Settings(run=RunSettings(keep_history_days=keep_history_days))
    return ArchiveWriter(settings, GitWork(settings.run, tmp_path / "work"))


def change(pushed: str = T2, when: datetime | None = None) -> Change:
    return Change("https://github.com/ann/r.git", "main", pushed, pushed,
                  when or datetime.now(UTC))


def archive(tmp_path: Path, bundle: bytes | None, zipped: bytes | None = b"ZIP") -> Archive:
    """A built archive as gitops leaves it: files the writer uploads and removes."""
    paths: list[Path | None] = []
    for name, data in (("r.bundle", bundle), ("r.zip", zipped)):
        path = tmp_path / name if data is not None else None
        if path is not None and data is not None:
            path.write_bytes(data)
        paths.append(path)
    return Archive(paths[0], paths[1], "main")


def stored(store: FencedStore, key: str = KEY) -> Head:
    head = store.head(key)
    assert head is not None
    return head


def read(store: FencedStore, key: str) -> bytes:
    with store.open(key) as f:
        return f.read()


def good_archive(store: FencedStore, **extra: str) -> Head:
    chain = layout.chain_id(OLD)
    store.put_bytes(KEY, b"BUNDLE", {LAST_SYNC: T1, PUSHED_AT: T1, UPDATED_AT: T1,
                                     CHAIN: chain, INCREMENTS: "0", **extra})
    return stored(store)


# -- failures ----------------------------------------------------------------------------------

def test_a_failure_never_replaces_a_good_archive(store: FencedStore) -> None:
    head = good_archive(store)
    written = ArchiveWriter.record_failure(store, "ann", "r", head, "clone failed")
    assert written == Written(WriteOutcome.FAILED, error="clone failed")  # size: as listed
    after = stored(store)
    assert read(store, KEY) == b"BUNDLE"
    assert after.get(ERROR) == "clone failed"
    assert {k: v for k, v in after.metadata.items() if k != "error"} == head.metadata


def test_a_failure_without_an_archive_is_a_zero_byte_bundle(store: FencedStore) -> None:
    written = ArchiveWriter.record_failure(store, "ann", "r", None, "clone failed")
    assert written == Written(WriteOutcome.FAILED, bundle_size=0, error="clone failed")
    after = stored(store)
    assert after.size == 0 and after.get(ERROR) == "clone failed" and after.get(LAST_SYNC)


def test_kept_since_is_kept_under_a_failure(store: FencedStore) -> None:
    """The kept chains stay known, so that the retention still ends them."""
    since = layout.chain_id(OLD)
    store.put_bytes(KEY, b"", {LAST_SYNC: T1, ERROR: EMPTY_REPOSITORY, KEPT_SINCE: since})
    ArchiveWriter.record_failure(store, "ann", "r", stored(store), "clone failed")
    after = stored(store)
    assert after.get(KEPT_SINCE) == since and after.get(ERROR) == "clone failed"


@pytest.mark.parametrize("with_archive", [True, False])
def test_a_long_error_is_cut_to_fit_the_store(store: FencedStore, with_archive: bool) -> None:
    head = good_archive(store) if with_archive else None
    ArchiveWriter.record_failure(store, "ann", "r", head, "fatal: ñ\n" * 1000)
    after = stored(store)
    assert after.get(ERROR).startswith("fatal: \\xf1 fatal") and after.get(ERROR).endswith("...")
    assert sum(len(k) + len(v) for k, v in after.metadata.items()) == METADATA_LIMIT_BYTES
    assert read(store, KEY) == (b"BUNDLE" if with_archive else b"")


# -- the full archive: whether it is written ---------------------------------------------------

def base(size: int, pushed: str) -> Head:
    return Head(size, OLD, {PUSHED_AT.lower(): pushed, UPDATED_AT.lower(): pushed})


def test_a_newer_archive_is_never_replaced() -> None:
    assert plan_full(base(10, T2), change(T1), False, 365) is FullPlan.NEWER_STORED
    assert plan_full(base(10, T2), change(T1), True, 0) is FullPlan.NEWER_STORED
    assert plan_full(base(10, T1), change(T2), False, 365) is FullPlan.STORE
    assert plan_full(base(10, T2), change(T2), False, 365) is FullPlan.STORE  # same: again
    # Only an archive with data can be newer; malformed stored times never block.
    assert plan_full(base(0, T2), change(T1), False, 365) is FullPlan.STORE
    assert plan_full(base(10, "garbage"), change(T1), False, 365) is FullPlan.STORE
    assert plan_full(None, change(T1), True, 0) is FullPlan.STORE


def test_an_emptied_repository_keeps_its_last_archive_without_history() -> None:
    assert plan_full(base(10, T1), change(T2), True, 0) is FullPlan.KEEP_LAST
    assert plan_full(base(10, T1), change(T2), True, 30) is FullPlan.STORE  # kept as history
    assert plan_full(base(0, T1), change(T2), True, 0) is FullPlan.STORE


# -- the full archive: what is written ---------------------------------------------------------

def test_a_first_full_archive(store: FencedStore, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    done = writer(tmp_path)._store_full(store, "ann", "r", change(T2, now),
                                        archive(tmp_path, b"BUNDLE2"), None)
    assert done == Written(WriteOutcome.ARCHIVED, 3 + 7, bundle_size=7)
    after = stored(store)
    assert read(store, KEY) == b"BUNDLE2"
    assert read(store, layout.zip_key("ann", "r")) == b"ZIP"
    assert after.get(CHAIN) == layout.chain_id(now) and after.get(INCREMENTS) == "0"
    assert (after.get(PUSHED_AT), after.get(LAST_SYNC)) == (T2, format_rfc3339(now))
    assert not after.get(KEPT_SINCE) and not list(tmp_path.glob("r.*"))  # files removed


def test_a_replaced_chain_is_kept_as_history(store: FencedStore, tmp_path: Path) -> None:
    old = good_archive(store)
    old_chain = chains.chain_of(old)
    writer(tmp_path)._store_full(store, "ann", "r", change(), archive(tmp_path, b"NEW"), old)
    after = stored(store)
    assert read(store, KEY) == b"NEW"
    assert after.get(CHAIN) > old_chain and after.get(KEPT_SINCE) == old_chain
    assert read(store, layout.part_key("ann", "r", old_chain, 0)) == b"BUNDLE"
    assert list_parts(store, "ann", "r").kept() == [old_chain]


def test_without_history_the_replaced_chain_goes(store: FencedStore, tmp_path: Path) -> None:
    old = good_archive(store)
    inc = layout.part_key("ann", "r", chains.chain_of(old), 1)
    store.put_bytes(inc, b"INC", {})
    writer(tmp_path, keep_history_days=0)._store_full(
        store, "ann", "r", change(), archive(tmp_path, b"NEW"), old)
    assert store.head(inc) is None and not list_parts(store, "ann", "r").chains
    assert not stored(store).get(KEPT_SINCE)


def test_emptied_again_stays_on_its_chain(store: FencedStore, tmp_path: Path) -> None:
    """An empty base written before increments (no `Chain`): its chain is the one its
    LastSync names (chains.chain_of), not a new one."""
    store.put_bytes(KEY, b"", {LAST_SYNC: T1, PUSHED_AT: T1, UPDATED_AT: T1,
                               ERROR: EMPTY_REPOSITORY})
    done = writer(tmp_path)._store_full(store, "ann", "r", change(),
                                        archive(tmp_path, None, None), stored(store))
    assert done == Written(WriteOutcome.EMPTY, 0, bundle_size=0)
    after = stored(store)
    assert after.get(CHAIN) == layout.chain_id(OLD) and after.get(ERROR) == EMPTY_REPOSITORY
    assert not list_parts(store, "ann", "r").chains  # nothing kept: the same chain


# -- retention of an unchanged repository ------------------------------------------------------

def test_an_unchanged_repository_drops_expired_history(store: FencedStore,
                                                       tmp_path: Path) -> None:
    now = datetime.now(UTC)
    expired, current = (layout.chain_id(now - timedelta(days=d)) for d in (60, 40))
    for seq in (0, 1):
        store.put_bytes(layout.part_key("ann", "r", expired, seq), b"P", {})
    store.put_bytes(KEY, b"BUNDLE", {LAST_SYNC: T1, CHAIN: current, KEPT_SINCE: expired})
    writer(tmp_path, keep_history_days=30).prune_expired(store, "ann", "r", stored(store))
    assert not list_parts(store, "ann", "r").chains
    assert not stored(store).get(KEPT_SINCE) and read(store, KEY) == b"BUNDLE"


def test_history_within_the_retention_stays(store: FencedStore, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    kept, current = (layout.chain_id(now - timedelta(days=d)) for d in (60, 10))
    store.put_bytes(layout.part_key("ann", "r", kept, 0), b"P", {})
    store.put_bytes(KEY, b"BUNDLE", {LAST_SYNC: T1, CHAIN: current, KEPT_SINCE: kept})
    writer(tmp_path, keep_history_days=30).prune_expired(store, "ann", "r", stored(store))
    assert list_parts(store, "ann", "r").kept() == [kept]
    assert stored(store).get(KEPT_SINCE) == kept


# -- what the store holds ----------------------------------------------------------------------

def test_repositories_are_the_bundles_with_valid_names(store: FencedStore) -> None:
    """Keys no sync writes (a name `names.check_repo_name` refuses) are not repositories:
    restore and verify would fail on them."""
    for key in ("ann/b.bundle", "ann/a.bundle", "ann/bad name.bundle", "ann/%x.bundle",
                "ann/a.zip", "ann", "ann/r.bundle.d/x/000001.bundle", "annie/c.bundle"):
        store.put_bytes(key, b"" if key.startswith("ann/a") else b"data", {})
    assert repositories(store, "ann") == {"a": 0, "b": 4}
    assert list(repositories(store, "ann")) == ["a", "b"]
