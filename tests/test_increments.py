"""Incremental archives end to end, on both stores: a real `bulkbackup sync` from the GitHub
stand-in stores increments, `bulkbackup restore` (and `--at`) rebuilds each state exactly,
consolidation keeps history, and a sync killed between any two store writes leaves the
previous or the new state, never a mix."""

from __future__ import annotations

import math
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bulkbackup import faults
from bulkbackup.archive import layout
from bulkbackup.archive.metadata import canonical
from bulkbackup.store import Store
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import (
    base_meta,
    git,
    parts,
    refs_of,
    remote_refs,
    restore,
    run_cli,
    start_serve,
    stop_serve,
    sync,
)

BIG = os.urandom(400_000)  # incompressible: a full bundle is far larger than an increment


def configure(tmp_path: Path, **run: int) -> None:
    lines = "".join(f"  {k}: {v}\n" for k, v in run.items())
    (tmp_path / "config.yaml").write_text(f"run:\n{lines}" if lines else "{}\n")


def stamp() -> str:
    """A time strictly between what was archived before and what is archived after, at
    `--at`'s one-second resolution: the next whole second S (what was archived before is
    older, to the microsecond), returned once S + 1 has begun (what is archived after is
    newer, even cut to the second). 1 to 2 s instead of a fixed 2.2 s."""
    second = math.floor(time.time()) + 1
    while (left_s := second + 1 - time.time()) > 0:
        time.sleep(left_s)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def test_a_change_is_stored_as_a_small_increment_and_restores_exactly(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("ann", [RepoSpec("big", files={"blob.bin": BIG, "a.txt": b"a\n"},
                                    branches={"dev": {"d.txt": b"d\n"}}, tags=["v1"])])
    sync("ann")
    full = store.head(layout.bundle_key("ann", "big"))
    assert full is not None and full.size > len(BIG)
    chain, n = base_meta(store, "ann", "big")
    assert layout.chain_time(chain) is not None and n == 0

    forge.push("ann", "big", {"a.txt": b"a2\n"})
    assert "1 archived" in sync("ann")
    assert base_meta(store, "ann", "big") == (chain, 1)
    (part,) = parts(store, "ann", "big")
    assert part[:2] == (chain, 1) and part[2] < full.size // 20
    mirror = restore("ann", "big", tmp_path / "r1")
    assert refs_of(mirror) == remote_refs(forge, "ann", "big")

    # A second change, a deleted branch and tag, a new annotated tag: increment 2.
    forge.push("ann", "big", {"b.txt": b"b\n"})
    forge.delete_ref("ann", "big", "refs/heads/dev")
    forge.delete_ref("ann", "big", "refs/tags/v1")
    forge.add_tag("ann", "big", "v2")
    sync("ann")
    assert base_meta(store, "ann", "big") == (chain, 2)
    mirror = restore("ann", "big", tmp_path / "r2")
    assert refs_of(mirror) == remote_refs(forge, "ann", "big")
    assert "refs/heads/dev" not in refs_of(mirror)

    # verify checks the whole chain; stats, show and serve count one repository.
    proc = run_cli("verify", "ann")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = orjson.loads(run_cli("show", "ann", "--json").stdout)
    (repo,) = shown["repositories"]
    sizes = [size for _, seq, size in parts(store, "ann", "big") if seq]
    assert (repo["increments"], repo["increment_bytes"], repo["history_chains"]) == (
        2, sum(sizes), 0)
    report = orjson.loads(run_cli("stats", "--json", "--no-write").stdout)
    assert report["repositories"]["archived"] == 1
    assert report["bytes"]["increments"] == sum(sizes)
    assert report["bytes"]["bundles"] == full.size
    served = start_serve(dict(os.environ), tmp_path / "serve.log")
    try:
        page = served.get("/users/ann").text
        assert ">2 (" in page
        assert served.get("/api/users/ann").json()["repositories"][0]["increments"] == 2
        # What the page says, done by hand with what it links to: the latest state.
        links = re.findall(r'href="(/users/ann/big[^"]*\.bundle)"', page)
        assert links == ["/users/ann/big.bundle", f"/users/ann/big.bundle.d/{chain}/000001.bundle",
                         f"/users/ann/big.bundle.d/{chain}/000002.bundle"]
        files = []
        for link in links:
            got = served.get(link)
            assert got.status_code == 200
            name = got.headers["content-disposition"].split('filename="')[1].rstrip('"')
            (tmp_path / name).write_bytes(got.content)
            files.append(tmp_path / name)
        assert [f.name for f in files[1:]] == [f"big.{chain}.00000{i}.bundle" for i in (1, 2)]
        git("clone", "-q", "--mirror", str(files[0]), str(tmp_path / "by-hand.git"))
        for part in files[1:]:
            git("fetch", "-q", "--prune", str(part), "+refs/*:refs/*", cwd=tmp_path / "by-hand.git")
        assert refs_of(tmp_path / "by-hand.git") == remote_refs(forge, "ann", "big")
        for bad in (f"/users/ann/big.bundle.d/{chain}/000003.bundle",
                    "/users/ann/big.bundle.d/../000001.bundle",
                    f"/users/ann/big.bundle.d/{chain}/1.bundle", "/users/ann/big.d/x/y/z"):
            assert served.get(bad).status_code == 404, bad
    finally:
        stop_serve(served)


def test_force_push_is_an_increment_and_restore_at_gives_the_old_history_back(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("bo", [RepoSpec("r", files={"blob.bin": BIG})])
    sync("bo")
    before = remote_refs(forge, "bo", "r")
    when = stamp()
    forge.force_push("bo", "r", {"new.txt": b"rewritten\n"})
    sync("bo")
    assert base_meta(store, "bo", "r")[1] == 1
    now = restore("bo", "r", tmp_path / "now")
    assert refs_of(now) == remote_refs(forge, "bo", "r") != before
    old = restore("bo", "r", tmp_path / "old", at=when)
    assert refs_of(old) == before
    proc = run_cli("restore", "bo/r", "--to", str(tmp_path / "x"), "--at", "2001-01-01T00:00:00Z")
    assert proc.returncode == 1 and "no archive at" in proc.stdout


def test_consolidation_keeps_the_old_chain_for_restore_at_and_retention_drops_it(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    configure(tmp_path, max_increments=2)
    forge.add_user("cy", [RepoSpec("r", files={"blob.bin": BIG})])
    sync("cy")
    first, _ = base_meta(store, "cy", "r")
    states = []
    for i in range(3):
        states.append((stamp(), remote_refs(forge, "cy", "r")))
        forge.push("cy", "r", {f"f{i}.txt": f"{i}\n".encode()})
        sync("cy")
    # Two increments on the first chain, then a full bundle again: a new chain.
    second, n = base_meta(store, "cy", "r")
    assert second > first and n == 0
    assert [(c, s) for c, s, _ in parts(store, "cy", "r")] == [
        (first, 0), (first, 1), (first, 2)]
    latest = restore("cy", "r", tmp_path / "latest")
    assert refs_of(latest) == remote_refs(forge, "cy", "r")
    for i, (when, refs) in enumerate(states):
        assert refs_of(restore("cy", "r", tmp_path / f"at{i}", at=when)) == refs

    # Without history, the next full bundle drops the kept chain.
    configure(tmp_path, max_increments=0, keep_history_days=0)
    forge.push("cy", "r", {"g.txt": b"g\n"})
    sync("cy")
    assert parts(store, "cy", "r") == []
    assert refs_of(restore("cy", "r", tmp_path / "end")) == remote_refs(forge, "cy", "r")


def test_emptied_renamed_and_huge_blob(env: None, forge: Forge, store: Store,
                                       tmp_path: Path) -> None:
    forge.add_user("dee", [RepoSpec("r", files={"blob.bin": BIG}),
                           RepoSpec("old-name", files={"x.txt": b"x\n"})])
    sync("dee")
    huge = os.urandom(3_000_000)
    forge.push("dee", "r", {"huge.bin": huge})
    sync("dee")
    assert base_meta(store, "dee", "r")[1] == 1
    mirror = restore("dee", "r", tmp_path / "huge")
    assert refs_of(mirror) == remote_refs(forge, "dee", "r")
    tip = refs_of(mirror)["refs/heads/main"]
    assert git("cat-file", "-s", f"{tip}:huge.bin", cwd=mirror).strip() == str(len(huge))

    when = stamp()
    forge.empty_repo("dee", "r")
    forge.rename_repo("dee", "old-name", "new-name")
    sync("dee")
    head = store.head(layout.bundle_key("dee", "r"))
    assert head is not None and head.size == 0 and head.get("Error") == "empty repository"
    assert refs_of(restore("dee", "r", tmp_path / "empty")) == {}
    assert refs_of(restore("dee", "r", tmp_path / "before", at=when)) == refs_of(mirror)
    renamed = restore("dee", "new-name", tmp_path / "renamed")
    assert refs_of(renamed) == remote_refs(forge, "dee", "new-name")
    assert store.head(layout.bundle_key("dee", "old-name")) is not None  # kept as it was
    # The renamed repository's own chain: its next change is an increment on it.
    forge.push("dee", "new-name", {"y.txt": b"y\n"})
    sync("dee")
    assert base_meta(store, "dee", "new-name")[1] == 1
    renamed = restore("dee", "new-name", tmp_path / "renamed2")
    assert refs_of(renamed) == remote_refs(forge, "dee", "new-name")


def _state(tmp_path: Path, name: str) -> dict[str, str]:
    return refs_of(restore("kim", "r", tmp_path / name))


KILL_POINTS = (1, 2, 3, 4)


def test_a_sync_killed_between_any_two_writes_leaves_a_whole_state(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    """Four writes each: an increment's zip, increment, base metadata, user object; then a
    consolidation's (max_increments 1, second change) zip, history copy, base, user object.
    Every kill point starts from the whole state the previous one's completing syncs left
    (a full bundle, no increment), so one base serves them all."""
    configure(tmp_path, max_increments=1)
    forge.add_user("kim", [RepoSpec("r", files={"blob.bin": BIG})])
    sync("kim")
    for kill_after in KILL_POINTS:
        assert base_meta(store, "kim", "r")[1] == 0  # the same starting point each time
        for step in range(2):  # an increment, then a consolidation
            old = remote_refs(forge, "kim", "r")
            forge.push("kim", "r", {f"k{kill_after}s{step}.txt": f"{step}\n".encode()})
            new = remote_refs(forge, "kim", "r")
            proc = run_cli("sync", "kim", env={faults.ENV: str(kill_after)})
            # Killed after that write.
            assert proc.returncode == -9, (kill_after, step, proc.stdout + proc.stderr)
            assert _state(tmp_path, f"k{kill_after}-{step}") in (old, new), (kill_after, step)
            sync("kim")  # the next sync completes the change
            assert _state(tmp_path, f"d{kill_after}-{step}") == new, (kill_after, step)
            assert run_cli("verify", "kim").returncode == 0, (kill_after, step)


def test_increments_above_half_the_full_bundle_make_the_next_archive_full(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("eve", [RepoSpec("r", files={"a.txt": b"a\n"},
                                    branches={"dev": {"d.txt": b"d\n"}}, tags=["v1"])])
    sync("eve")
    first, _ = base_meta(store, "eve", "r")
    big = os.urandom(200_000)
    forge.push("eve", "r", {"big.bin": big})  # far more than the base
    sync("eve")
    assert base_meta(store, "eve", "r") == (first, 1)
    before = remote_refs(forge, "eve", "r")
    when = stamp()
    # Force-push, deleted branch and tag: consolidated into a full bundle, not an increment.
    forge.force_push("eve", "r", {"n.txt": b"n\n"})
    forge.delete_ref("eve", "r", "refs/heads/dev")
    forge.delete_ref("eve", "r", "refs/tags/v1")
    sync("eve")
    second, n = base_meta(store, "eve", "r")
    assert second > first and n == 0
    assert [(c, s) for c, s, _ in parts(store, "eve", "r")] == [(first, 0), (first, 1)]
    assert refs_of(restore("eve", "r", tmp_path / "now")) == remote_refs(forge, "eve", "r")
    then = restore("eve", "r", tmp_path / "then", at=when)
    assert refs_of(then) == before
    # The big blob comes back from the kept chain's increment.
    tip = before["refs/heads/main"]
    assert git("cat-file", "-s", f"{tip}:big.bin", cwd=then).strip() == str(len(big))


def test_a_full_bundle_from_before_increments_starts_a_chain(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    """An archive written by an earlier version (no `Chain`, no `Increments`) takes its
    first increment with a chain id derived from its LastSync, and is kept as history."""
    configure(tmp_path, max_increments=1)
    forge.add_user("old", [RepoSpec("r", files={"blob.bin": BIG})])
    sync("old")
    head = store.head(layout.bundle_key("old", "r"))
    assert head is not None
    meta = {k: v for k, v in canonical(head.metadata).items()
            if k not in ("Chain", "Increments")}
    store.replace_metadata(layout.bundle_key("old", "r"), meta)
    derived = layout.chain_id(datetime.fromisoformat(meta["LastSync"].replace("Z", "+00:00")))
    forge.push("old", "r", {"one.txt": b"1\n"})
    sync("old")
    assert base_meta(store, "old", "r") == (derived, 1)
    first_change = remote_refs(forge, "old", "r")
    assert refs_of(restore("old", "r", tmp_path / "a")) == first_change
    when = stamp()
    forge.push("old", "r", {"two.txt": b"2\n"})
    sync("old")  # max_increments 1: a full bundle again, the derived chain kept
    assert base_meta(store, "old", "r")[1] == 0
    kept = store.head(layout.part_key("old", "r", derived, 0))
    assert kept is not None and kept.get("Chain") == derived and kept.get("Increments") == "1"
    assert refs_of(restore("old", "r", tmp_path / "b", at=when)) == first_change
    assert refs_of(restore("old", "r", tmp_path / "c")) == remote_refs(forge, "old", "r")


def test_retention_drops_a_kept_chain_once_its_successor_is_older_than_keep_history_days(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    """Two kept chains from earlier syncs (made here by copying the full bundle, as a
    consolidation does): 10 and 5 days old. With keep_history_days 1, the older one serves
    no restore within the retention (its successor started 5 days ago) and goes, found
    without a listing (`KeptSince`); the younger one stays for `restore --at`."""
    configure(tmp_path, keep_history_days=1)
    forge.add_user("ret", [RepoSpec("r", files={"a.txt": b"a\n"})])
    sync("ret")
    base = layout.bundle_key("ret", "r")
    now = datetime.now(UTC)
    old, younger = (layout.chain_id(now - timedelta(days=d)) for d in (10, 5))
    for chain in (old, younger):
        store.copy(base, layout.part_key("ret", "r", chain, 0))
    head = store.head(base)
    assert head is not None
    store.replace_metadata(base, {**canonical(head.metadata), "KeptSince": old})
    sync("ret")  # nothing changed upstream: only the retention acts
    assert [(c, s) for c, s, _ in parts(store, "ret", "r")] == [(younger, 0)]
    head = store.head(base)
    assert head is not None and head.get("KeptSince") == younger
    at = (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert refs_of(restore("ret", "r", tmp_path / "at", at=at)) == remote_refs(forge, "ret", "r")
    week = (now - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    proc = run_cli("restore", "ret/r", "--to", str(tmp_path / "x"), "--at", week)
    assert proc.returncode == 1 and "no archive at" in proc.stdout
