"""`bulkbackup restore`: bare mirrors rebuilt from the store alone, on both stores. The store is
filled by a real `bulkbackup sync` from the GitHub stand-in, then damaged with the store API."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkbackup.store import Store
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import damage, git, refs_of, run_cli


def synced(forge: Forge, login: str, repos: list[RepoSpec]) -> None:
    forge.add_user(login, repos)
    proc = run_cli("sync", login)
    assert "archived" in proc.stdout, proc.stderr


def test_restore_user_gives_exact_mirrors_and_zips(env: None, forge: Forge, store: Store,
                                                   tmp_path: Path) -> None:
    synced(forge, "octocat", [
        RepoSpec("Hello-World", branches={"dev": {"d.txt": b"dev\n"}}, tags=["v1.0"]),
        RepoSpec("trunk", default_branch="trunk", branches={"zz": {"z": b"z\n"}}),
        RepoSpec("void", empty=True),
    ])
    to = tmp_path / "out"
    proc = run_cli("restore", "octocat", "--to", str(to), "--zip")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 repositories restored, 0 without archive, 0 failed" in proc.stderr
    for name, branch in (("Hello-World", "main"), ("trunk", "trunk")):
        mirror = to / "octocat" / f"{name}.git"
        source = forge.root / "git" / "octocat" / f"{name}.git"
        assert refs_of(mirror) == refs_of(source)
        assert git("symbolic-ref", "HEAD", cwd=mirror).strip() == f"refs/heads/{branch}"
        git("fsck", "--full", cwd=mirror)
        assert "[remote" not in (mirror / "config").read_text()  # the store, not GitHub
        assert (to / "octocat" / f"{name}.zip").stat().st_size > 0
    assert {"refs/tags/v1.0", "refs/tags/v1.0-light", "refs/heads/dev"} <= set(
        refs_of(to / "octocat" / "Hello-World.git"))
    assert refs_of(to / "octocat" / "void.git") == {}  # the empty repository, as it was
    # Nothing else is left beside the mirrors (no temporary directories).
    assert sorted(p.name for p in (to / "octocat").iterdir()) == [
        "Hello-World.git", "Hello-World.zip", "trunk.git", "trunk.zip", "void.git"]

    # An existing target is kept; --force replaces an earlier restore of the same repository.
    proc = run_cli("restore", "octocat/trunk", "--to", str(to))
    assert proc.returncode == 1 and "exists" in proc.stdout and "--force" in proc.stdout
    proc = run_cli("restore", "octocat/trunk", "--to", str(to), "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and never anything else, even with --force.
    other = to / "octocat" / "Hello-World.git"
    git("config", "bulkbackup.restoredfrom", "octocat/trunk", cwd=other)
    proc = run_cli("restore", "octocat/Hello-World", "--to", str(to), "--force")
    assert proc.returncode == 1 and "not a restore of octocat/Hello-World" in proc.stdout


def test_restore_names_what_cannot_be_restored(env: None, forge: Forge, store: Store,
                                                tmp_path: Path) -> None:
    synced(forge, "bob", [RepoSpec("good"), RepoSpec("cut"), RepoSpec("gone", missing=True),
                          RepoSpec("blank")])
    data = store.read_bytes("bob/cut.bundle")
    damage(store, "bob/cut.bundle", data[: len(data) - 300])
    damage(store, "bob/blank.bundle", b"", drop=("error",))
    to = tmp_path / "out"
    proc = run_cli("restore", "bob", "--to", str(to))
    assert proc.returncode == 1
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    assert "restored to" in lines["bob/good"]
    assert "FAILED" in lines["bob/cut"] and "truncated" in lines["bob/cut"]
    # No archive, and its Error says why (recorded by the sync): reported, not a failure.
    assert lines["bob/gone"].startswith("bob/gone: no archive: git clone"), lines["bob/gone"]
    assert "FAILED" not in lines["bob/gone"]
    assert "FAILED" in lines["bob/blank"] and "zero bytes without an Error" in lines["bob/blank"]
    assert "1 repositories restored, 1 without archive, 2 failed" in proc.stderr
    # Never a half-restored repository, nor a temporary directory left behind.
    assert sorted(p.name for p in (to / "bob").iterdir()) == ["good.git"]
    # Asked for by name, a repository without an archive is a failure: nothing was restored.
    proc = run_cli("restore", "bob/gone", "--to", str(to))
    assert proc.returncode == 1 and "bob/gone: FAILED: no archive: git clone" in proc.stdout

    proc = run_cli("restore", "bob/nothere", "--to", str(to))
    assert proc.returncode == 1 and "missing object bob/nothere.bundle" in proc.stdout
    proc = run_cli("restore", "nobody", "--to", str(to))
    assert proc.returncode == 1 and "no archives stored for user nobody" in proc.stdout


def test_restore_user_whose_repositories_without_archive_say_why_exits_0(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    """A repository deleted upstream (or failing to clone) is recorded with its Error by the
    sync: the user's restore restores the rest and exits 0, naming it."""
    synced(forge, "dan", [RepoSpec("kept"), RepoSpec("gone", missing=True)])
    to = tmp_path / "out"
    proc = run_cli("restore", "dan", "--to", str(to))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dan/gone: no archive: git clone" in proc.stdout
    assert "1 repositories restored, 1 without archive, 0 failed" in proc.stderr
    assert sorted(p.name for p in (to / "dan").iterdir()) == ["kept.git"]


def test_restore_user_leaves_out_keys_no_repository_can_have(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    """A bundle key whose name is not a repository name (not written by a sync: put there
    by hand or another tool) is not one of the user's repositories: the restore of the
    user does not fail on it (it used to, "invalid repository name")."""
    synced(forge, "erin", [RepoSpec("kept")])
    store.put_bytes("erin/bad name.bundle", b"", {"Error": "not ours"})
    to = tmp_path / "out"
    proc = run_cli("restore", "erin", "--to", str(to))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 repositories restored, 0 without archive, 0 failed" in proc.stderr
    assert "bad name" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in (to / "erin").iterdir()) == ["kept.git"]


def test_restore_at(env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    synced(forge, "carol", [RepoSpec("r")])
    head = store.head("carol/r.bundle")
    assert head is not None
    last_sync = head.get("LastSync")
    to = tmp_path / "out"
    proc = run_cli("restore", "carol/r", "--to", str(to), "--at", "2000-01-01T00:00:00Z")
    assert proc.returncode == 1
    assert f"no archive at 2000-01-01T00:00:00Z: the oldest is {last_sync}" in proc.stdout
    assert not (to / "carol" / "r.git").exists()
    proc = run_cli("restore", "carol/r", "--to", str(to), "--at", "2999-01-01T00:00:00+02:00")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The default DIR is the current directory (relative paths work).
    proc = run_cli("restore", "carol", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert refs_of(tmp_path / "carol" / "r.git") == refs_of(to / "carol" / "r.git")


@pytest.mark.parametrize("args", [
    ["restore", "../etc", "--to", "x"],
    ["restore", "carol/..", "--to", "x"],
    ["restore", "carol/a/b"],
    ["restore", "carol", "--at", "yesterday"],
    ["restore", "carol", "--at", "2026-01-01"],
])
def test_restore_refuses_bad_input(clean_env: None, tmp_path: Path, args: list[str]) -> None:
    proc = run_cli(*args, env={"BULKBACKUP_STORE": str(tmp_path / "store")}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("bulkbackup: error:") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def with_hostile_ref(data: bytes) -> bytes:
    """The bundle with one more ref in its header, named with terminal escapes and a
    direction override, pointing to the first ref's commit."""
    header, sep, pack = data.partition(b"\n\n")
    first = header.split(b"\n")[1].split(b" ")[0]
    name = "refs/heads/\x1b[2J\x1b]0;owned\x07\u202eevil".encode()
    return header + b"\n" + first + b" " + name + sep + pack


def test_control_characters_from_a_bundle_are_escaped(env: None, forge: Forge, store: Store,
                                                      tmp_path: Path) -> None:
    synced(forge, "eve", [RepoSpec("r")])
    damage(store, "eve/r.bundle", with_hostile_ref(store.read_bytes("eve/r.bundle")))
    outputs = [run_cli("restore", "eve", "--to", str(tmp_path / "out")),
               run_cli("verify", "eve"), run_cli("show", "eve")]
    assert [p.returncode for p in outputs] == [1, 1, 0], [p.stdout for p in outputs]
    head = store.head("eve/r.bundle")
    assert head is not None and head.get("Error").startswith("verify failed:")
    for text in [head.get("Error"), *(p.stdout + p.stderr for p in outputs)]:
        assert not any(c in text for c in "\x1b\x07\u202e"), text
    assert "\\x1b" in outputs[0].stdout and "\\x1b" in head.get("Error")
    assert "\\x1b" in outputs[2].stdout  # show prints the recorded Error, escaped


def test_restore_to_a_file_or_through_a_symlink_is_refused(env: None, forge: Forge,
                                                           store: Store, tmp_path: Path) -> None:
    synced(forge, "fay", [RepoSpec("r")])
    file = tmp_path / "file"
    file.write_text("keep\n")
    proc = run_cli("restore", "fay", "--to", str(file))
    assert proc.returncode == 2 and "not a directory" in proc.stderr, proc.stderr
    assert file.read_text() == "keep\n"
    to, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    to.mkdir()
    elsewhere.mkdir()
    (to / "fay").symlink_to(elsewhere)
    proc = run_cli("restore", "fay", "--to", str(to))
    assert proc.returncode == 1 and "is a symbolic link: not followed" in proc.stdout
    assert list(elsewhere.iterdir()) == []
    proc = run_cli("restore", "fay/r", "--to", str(tmp_path / "o2"), "--at",
                   "0001-01-01T00:00:00Z")
    assert proc.returncode == 1 and "no archive at 0001-01-01T00:00:00Z" in proc.stdout
