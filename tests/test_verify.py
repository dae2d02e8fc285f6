"""`bulkbackup verify`: each kind of bad archive is found and named, on both stores, and the
result is recorded on the bundle without touching its data. The store is filled by a real
`bulkbackup sync` from the GitHub stand-in, then damaged with the store API."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis

from bulkbackup.passes.verify import sample_logins
from bulkbackup.store import Store
from bulkbackup.store.listing import ObjectInfo
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import damage, git, run_cli, verify


def without_branch(store: Store, key: str, branch: str, tmp_path: Path) -> bytes:
    """The bundle at ``key`` with ``branch`` deleted (HEAD moved to another branch)."""
    bundle = tmp_path / "in.bundle"
    bundle.write_bytes(store.read_bytes(key))
    mirror = tmp_path / "edit.git"
    git("clone", "--quiet", "--mirror", str(bundle), str(mirror))
    git("symbolic-ref", "HEAD", "refs/heads/dev", cwd=mirror)
    git("update-ref", "-d", f"refs/heads/{branch}", cwd=mirror)
    git("bundle", "create", "--quiet", str(tmp_path / "out.bundle"), "--all", cwd=mirror)
    return (tmp_path / "out.bundle").read_bytes()


def test_every_kind_of_bad_archive_is_found_and_named(
    env: None, forge: Forge, store: Store, tmp_path: Path, r: redis.Redis
) -> None:
    dev = {"dev": {"d.txt": b"dev\n"}}
    forge.add_user("dora", [
        RepoSpec("good", branches=dev, tags=["v1"]), RepoSpec("cut"), RepoSpec("blank"),
        RepoSpec("nomain", branches=dev), RepoSpec("swapped", files={"other.txt": b"x\n"}),
        RepoSpec("notzip"), RepoSpec("void", empty=True),
    ])
    assert run_cli("sync", "dora").returncode == 0
    before = {i.key: i for i in store.list("dora/")}
    data = store.read_bytes("dora/cut.bundle")
    damage(store, "dora/cut.bundle", data[: len(data) // 2])
    damage(store, "dora/blank.bundle", b"", drop=("error",))
    damage(store, "dora/nomain.bundle",
           without_branch(store, "dora/nomain.bundle", "main", tmp_path))
    damage(store, "dora/swapped.bundle", store.read_bytes("dora/good.bundle"))
    damage(store, "dora/notzip.zip", b"this is not a zip file\n")
    damaged = {i.key: i for i in store.list("dora/")}

    code, report = verify("dora")
    assert code == 1
    (user,) = report["users"]
    results = {r["name"]: (r["result"], r["reason"] or "") for r in user["repositories"]}
    assert results["good"] == ("verified", "")
    assert results["void"] == ("no_archive", "empty repository")
    assert results["cut"][0] == "failed" and "dora/cut.bundle: bundle truncated" in \
        results["cut"][1]
    assert results["blank"] == ("failed", "dora/blank.bundle is zero bytes without an Error")
    assert results["nomain"][0] == "failed"
    assert "default branch main (user object) is not in the bundle" in results["nomain"][1]
    assert results["swapped"][0] == "failed"
    assert "dora/swapped.zip: made from commit" in results["swapped"][1]
    assert results["notzip"][0] == "failed" and "dora/notzip.zip: not a zip file" in \
        results["notzip"][1]
    assert report["totals"] == {"users": 1, "users_failed": 1, "archives": 7, "verified": 1,
                                "failed": 5, "no_archive": 1,
                                "elapsed_s": report["totals"]["elapsed_s"]}

    # Recorded on each bundle, other metadata kept; no archive's data changed.
    good = store.head("dora/good.bundle")
    assert good is not None and good.get("VerifiedAt").endswith("Z")
    assert good.get("PushedAt") and good.get("LastSync") and not good.get("Error")
    for name in ("cut", "blank", "nomain", "swapped", "notzip"):
        head = store.head(f"dora/{name}.bundle")
        assert head is not None and head.get("Error") == "verify failed: " + results[name][1]
        assert not head.get("VerifiedAt")
    assert store.head("dora/void.bundle").get("Error") == "empty repository"  # type: ignore[union-attr]
    after = {i.key: i.size for i in store.list("dora/")}
    assert after == {k: i.size for k, i in damaged.items()}
    assert set(after) == set(before)

    # A second pass finds the same (the zero-byte bundle now has an Error: still a failure).
    code, again = verify("dora")
    assert code == 1 and again["totals"]["failed"] == 5

    # stats reports the last pass (kept in Redis by verify: no request per archive).
    proc = run_cli("stats", "--json", "--no-write")
    assert proc.returncode == 0, proc.stderr
    figures = orjson.loads(proc.stdout)["verify"]
    assert (figures["archives"], figures["verified"], figures["failed"],
            figures["no_archive"]) == (7, 1, 5, 1)
    assert (figures["verified_total"], figures["failed_total"]) == (2, 10)
    assert figures["ended_at"].endswith("Z")


def test_sample_and_summary(env: None, forge: Forge, store: Store) -> None:
    forge.add_users({"u1": [RepoSpec("a")], "u2": [RepoSpec("b")]})
    assert run_cli("sync", "u1", "u2").returncode == 0
    proc = run_cli("verify", "--sample", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: 1 users, 1 archives: 1 verified, 0 failed, 0 without archive" in proc.stderr
    code, report = verify("--sample", "100")
    assert code == 0
    assert sorted(u["login"] for u in report["users"]) == ["u1", "u2"]

    proc = run_cli("verify", "nobody")
    assert proc.returncode == 1 and "nobody: FAILED: user nobody is not in the store" in \
        proc.stdout
    for args in (["verify"], ["verify", "u1", "--sample", "2"], ["verify", "../x"],
                 ["verify", "--sample", "0"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)


class _Listing:
    """Only what sample_logins uses: a top-level listing of ``n`` users (a real listing is
    covered above; this one lets the draw be repeated many times)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def list_top(self) -> Iterator[ObjectInfo]:
        from datetime import UTC, datetime

        for i in range(self.n):
            yield ObjectInfo(f"user{i}", 2, datetime.now(UTC))


def test_sampling_is_uniform_and_keeps_only_the_sample() -> None:
    store = _Listing(50)
    counts = dict.fromkeys(range(50), 0)
    for seed in range(400):
        picked = sample_logins(store, 5, random.Random(seed))  # type: ignore[arg-type]
        assert len(picked) == len(set(picked)) == 5
        for login in picked:
            counts[int(login.removeprefix("user"))] += 1
    # Each user is drawn 5/50 of the time: 40 of 400 draws expected.
    assert min(counts.values()) > 15 and max(counts.values()) < 70
    few = sample_logins(_Listing(3), 5, random.Random(1))  # type: ignore[arg-type]
    assert few == ["user0", "user1", "user2"]


def test_a_bundle_that_failed_verification_is_archived_again(
    env: None, forge: Forge, store: Store, r: redis.Redis
) -> None:
    """Unchanged upstream (same pushed_at/updated_at), a bundle marked `verify failed:` is not
    skipped by the next sync: it is archived again, and verifies."""
    forge.add_user("vera", [RepoSpec("cut")])
    assert run_cli("sync", "vera").returncode == 0
    data = store.read_bytes("vera/cut.bundle")
    damage(store, "vera/cut.bundle", data[: len(data) // 2])
    assert verify("vera")[0] == 1
    head = store.head("vera/cut.bundle")
    assert head is not None and head.get("Error").startswith("verify failed: ")
    clones = forge.clones("vera", "cut")

    assert run_cli("sync", "vera").returncode == 0
    assert forge.clones("vera", "cut") == clones + 1
    assert store.read_bytes("vera/cut.bundle") == data
    head = store.head("vera/cut.bundle")
    assert head is not None and head.get("Error") == ""
    code, report = verify("vera")
    assert code == 0, report
