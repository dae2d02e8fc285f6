"""Verify tells corruption from format oddities git tolerates (issue 26 item 1).

Each oddity is a real object written with `git hash-object --literally`; a fetch with git's
default config takes it, and verify notes it (`VerifyNotes`) instead of failing, so the next
sync does not archive the repository again. Corruption (a missing object, a tree git cannot
parse, a damaged bundle) still fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError
from bulkbackup.git.fsck import NOTES_MAX_CHARS, TOLERATED, FsckNotes, fsck
from bulkbackup.git.localgit import Git
from bulkbackup.store import Store
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.oddities import add_bad_tree, add_oddities
from tests.helpers import damage, git, run_cli, verify


def _source(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "src.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(src))
    stream = (b"commit refs/heads/main\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n"
              b"data 2\nm\nM 100644 inline f\ndata 2\nf\n\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=src, input=stream, check=True)
    return src, add_oddities(src)


def _fetched(src: Path, tmp_path: Path, name: str = "dst.git") -> Path:
    """A fetch of every ref with git's default config (no user or system config)."""
    dst = tmp_path / name
    git("init", "--quiet", "--bare", "--initial-branch=main", str(dst))
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    # Loose objects (below the unpack limit), so a test can remove one.
    subprocess.run(["git", "-c", "fetch.unpackLimit=100000", "fetch", "--quiet",
                    f"file://{src}", "+refs/*:refs/*"], cwd=dst, env=env, check=True,
                   capture_output=True)
    return dst


def test_every_oddity_git_fetches_is_noted_not_failed(tmp_path: Path) -> None:
    src, made = _source(tmp_path)
    dst = _fetched(src, tmp_path)  # a fetch takes every one of them
    plain = subprocess.run(["git", "fsck", "--full", "--no-dangling"], cwd=dst,
                           capture_output=True, text=True)
    assert plain.returncode != 0  # plain fsck fails this faithful copy
    notes = fsck(Git(Settings(), tmp_path), dst)
    assert set(notes.counts) == set(made)  # each case gives exactly its own message id
    assert set(made) <= TOLERATED
    text = notes.text()
    assert "badTimezone 1 (commit " + made["badTimezone"][:12] + ")" in text
    assert len(text) <= NOTES_MAX_CHARS and text.isascii() and text.endswith(" more")


def test_corruption_beside_oddities_still_fails(tmp_path: Path) -> None:
    src, made = _source(tmp_path)
    dst = _fetched(src, tmp_path)
    missing = git("rev-parse", f"{made['badTimezone']}^{{tree}}", cwd=dst).strip()
    lost = tmp_path / "lost.git"  # the same objects but one (a tree), refs kept
    shutil.copytree(dst, lost)
    (lost / "objects" / missing[:2] / missing[2:]).unlink()
    broken = "git fsck failed: broken link from commit .* to tree " + missing
    with pytest.raises(ArchiveError, match=broken):
        fsck(Git(Settings(), tmp_path), lost)
    assert fsck(Git(Settings(), tmp_path), dst).counts  # the copy with it still passes

    add_bad_tree(dst)  # a tree git cannot parse: not tolerated
    with pytest.raises(ArchiveError, match="git fsck failed"):
        fsck(Git(Settings(), tmp_path), dst)


def test_notes_are_bounded() -> None:
    notes = FsckNotes()
    for i in range(100):
        notes.add(f"someMessageId{i:03d}", "commit", f"{i:040x}")
    text = notes.text()
    assert len(text) <= NOTES_MAX_CHARS and text.endswith(" more")


def test_sync_verify_resync_of_a_repository_with_oddities(
    env: None, forge: Forge, store: Store
) -> None:
    forge.add_user("olga", [RepoSpec("old")])
    made = add_oddities(forge.git_root / "olga" / "old.git")
    assert run_cli("sync", "olga").returncode == 0
    bundle = store.read_bytes("olga/old.bundle")

    code, report = verify("olga")
    assert code == 0, report["users"][0]["repositories"]
    (repo,) = report["users"][0]["repositories"]
    assert repo["result"] == "verified" and repo["notes"].startswith("badDate ")
    head = store.head("olga/old.bundle")
    assert head is not None and not head.get("Error") and head.get("VerifiedAt")
    assert head.get("VerifyNotes") == repo["notes"]
    assert f"badDate 1 (commit {made['badDate'][:12]})" in head.get("VerifyNotes")

    clones = forge.clones("olga", "old")  # nothing changed upstream: nothing archived again
    assert run_cli("sync", "olga").returncode == 0
    assert forge.clones("olga", "old") == clones
    assert store.read_bytes("olga/old.bundle") == bundle
    assert [i.key for i in store.list("olga/")] == ["olga/old.bundle", "olga/old.zip"]

    # A damaged bundle of the same repository still fails.
    damage(store, "olga/old.bundle", bundle[: len(bundle) // 2])
    code, report = verify("olga")
    assert code == 1
    head = store.head("olga/old.bundle")
    assert head is not None and head.get("Error").startswith("verify failed: ")
