"""An increment is committed only once it is proved to apply on its chain (README
"Incremental archives"): a real `bulkbackup sync` against a stand-in whose answer to the
increment fetch is wrong keeps the old state, records the failure in the repository's Error
and counts it failed; `restore` then gives the old state back, and the next pass against a
sane server archives the new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import canonical
from bulkbackup.config import StoreSettings
from bulkbackup.queue import keys
from bulkbackup.store import Store
from bulkbackup.store.local import LocalStore
from bulkbackup.testing import hostile_packs as hp
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import (
    base_meta,
    git,
    parts,
    refs_of,
    remote_refs,
    restore,
    run_cli,
    source,
    start_run,
    sync,
    track,
)

FILES = {"a.txt": b"a\n", "blob.bin": os.urandom(50_000)}


Fix = Callable[[], None]  # makes the server sane again


def _push(forge: Forge, login: str) -> None:
    forge.push(login, "r", {"a.txt": b"a2\n", "new.bin": os.urandom(5_000)})


def _new_branch(forge: Forge, login: str) -> None:
    forge.add_branch(login, "r", "feature", {"f.txt": b"feature\n"})


def _with(answer: hp.PackAnswer, change: Callable[[Forge, str], None]
          ) -> Callable[[Forge, str], Fix]:
    def hostile(forge: Forge, login: str) -> Fix:
        change(forge, login)
        forge.set_pack_answer(login, "r", answer)
        return lambda: forge.set_pack_answer(login, "r", None)
    return hostile


def _branch_at_blob(forge: Forge, login: str) -> Fix:
    _push(forge, login)
    repo = source(forge, login, "r")
    tip = git("rev-parse", "refs/heads/main", cwd=repo).strip()
    forge.point_ref(login, "r", "refs/heads/main", git("rev-parse", f"{tip}:new.bin",
                                                       cwd=repo).strip())
    return lambda: forge.point_ref(login, "r", "refs/heads/main", tip)


def _tag_at_unsent_tree(forge: Forge, login: str) -> Fix:
    _push(forge, login)
    tree = forge.tag_tree(login, "r", "t", {"t.txt": b"tree of a tag\n"})
    forge.set_pack_answer(login, "r", hp.without({tree}))
    return lambda: forge.set_pack_answer(login, "r", None)


# Each: the change on the server and the wrong answer to its increment fetch; it returns
# what makes the server sane again.
HOSTILE: dict[str, Callable[[Forge, str], Fix]] = {
    "no-objects-for-a-new-branch": _with(hp.no_objects, _new_branch),
    "delta-past-its-base": _with(hp.delta_past_base, _push),
    "blob-claiming-2^60-bytes": _with(hp.huge_blob, _push),
    "objects-not-wanted": _with(hp.other_objects, _push),
    "junk-after-the-last-object": _with(hp.trailing_junk, _push),
    "main-at-a-blob": _branch_at_blob,
    "tag-at-a-tree-never-sent": _tag_at_unsent_tree,
}


def _check_refused(forge: Forge, store: Store, login: str, before: dict[str, str],
                   tmp_path: Path) -> None:
    proc = run_cli("sync", login)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 archived" in proc.stdout and "1 failed" in proc.stdout, proc.stdout
    head = store.head(layout.bundle_key(login, "r"))
    assert head is not None
    assert head.get("Error").startswith("increment refused"), head.get("Error")
    assert base_meta(store, login, "r")[1] == 0
    assert parts(store, login, "r") == []  # nothing of the refused increment is left
    assert refs_of(restore(login, "r", tmp_path / "refused")) == before


# Every answer on the local store; one on S3 too (the proof reads the chain back from either
# store alike: in place, or downloaded).
@pytest.mark.parametrize(("case", "store_url"),
                         [*((case, "local") for case in sorted(HOSTILE)),
                          ("delta-past-its-base", "s3")], indirect=["store_url"])
def test_a_wrong_increment_is_refused_and_the_next_sane_pass_stores_it(
        case: str, env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    login = "pat"
    forge.add_user(login, [RepoSpec("r", files=FILES, tags=["v1"])])
    sync(login)
    before = remote_refs(forge, login, "r")
    fix = HOSTILE[case](forge, login)
    _check_refused(forge, store, login, before, tmp_path)

    fix()
    out = sync(login)
    assert "1 archived" in out and "MB read back" in out  # the base, to prove on
    assert base_meta(store, login, "r")[1] == 1
    head = store.head(layout.bundle_key(login, "r"))
    assert head is not None and head.get("Error") == ""
    assert refs_of(restore(login, "r", tmp_path / "sane")) == remote_refs(forge, login, "r")


def _full_then_increment(forge: Forge) -> None:
    """`dee/r` archived by two real syncs: a full bundle, then one increment on it."""
    forge.add_user("dee", [RepoSpec("r", files=FILES)])
    sync("dee")
    _push(forge, "dee")
    sync("dee")


@pytest.fixture(scope="module")
def local_full_then_increment(redis_server: str, tmp_path_factory: pytest.TempPathFactory
                              ) -> Path:
    """A local store made once by _full_then_increment (the cases only damage a copy)."""
    tmp = tmp_path_factory.mktemp("full-then-increment")
    store_dir = tmp / "backup" / "github.com"
    (tmp / "config.yaml").write_text("{}\n")
    with Forge(tmp / "forge") as forge, pytest.MonkeyPatch.context() as mp:
        for name in ("GITHUB_TOKEN", "GITHUB_TOKENS", "GITHUB_API_URL", "GITHUB_GIT_HOST",
                     "BULKBACKUP_WORKER_HOST", "BULKBACKUP_DEBUG"):
            mp.delenv(name, raising=False)
        mp.setenv("BULKBACKUP_CONFIG", str(tmp / "config.yaml"))
        mp.setenv("BULKBACKUP_STORE", str(store_dir))
        mp.setenv("REDIS_URL", redis_server)
        mp.setenv("GITHUB_API_URL", forge.url)
        _full_then_increment(forge)
    return store_dir


# The check reads metadata alike on both stores: every damage locally, one on S3.
@pytest.mark.parametrize(("damage", "store_url"),
                         [*((d, "local") for d in ["x", "-1", "1e3", "99999999"]),
                          ("x", "s3")], indirect=["store_url"])
def test_damaged_increments_metadata_fails_restore_and_verify(
        damage: str, env: None, forge: Forge, store: Store, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    if isinstance(store, LocalStore):  # a copy, object by object (a sidecar is inode-bound)
        made = LocalStore(StoreSettings(url=str(request.getfixturevalue(
            "local_full_then_increment"))))
        for info in made.list():
            head = made.head(info.key)
            assert head is not None
            store.put_bytes(info.key, made.read_bytes(info.key), canonical(head.metadata))
    else:
        _full_then_increment(forge)
    key = layout.bundle_key("dee", "r")
    head = store.head(key)
    assert head is not None and head.get("Increments") == "1"
    store.replace_metadata(key, layout.updated_metadata(head, {"Increments": damage}))
    proc = run_cli("restore", "dee/r", "--to", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"damaged Increments metadata '{damage}'" in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "dee" / "r.git").exists()
    proc = run_cli("verify", "dee")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "damaged Increments metadata" in proc.stdout + proc.stderr


def test_verify_sample_checks_the_increments_a_run_committed_first(
        run_env: dict[str, str], r: redis.Redis, forge: Forge) -> None:
    forge.add_users({login: [RepoSpec("r", files=FILES)]
                     for login in ("pen", "u1", "u2", "u3", "u4", "u5")})
    proc = run_cli("sync", "pen", "u1", "u2", "u3", "u4", "u5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert r.zcard(keys.VERIFY_PENDING) == 0  # full archives: git wrote them
    _push(forge, "pen")
    track(r, "pen")
    run = start_run(run_env, "--procs", "1")
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert r.zrange(keys.VERIFY_PENDING, 0, -1) == ["pen/r"]

    proc = run_cli("verify", "--sample", "1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [u["login"] for u in orjson.loads(proc.stdout)["users"]] == ["pen"]
    assert r.zcard(keys.VERIFY_PENDING) == 0  # its result is recorded: no longer pending
    proc = run_cli("verify", "--sample", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(orjson.loads(proc.stdout)["users"]) == 2  # then the random sample
