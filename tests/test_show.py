"""`bulkbackup show`: the seed's six read operations for one user, on both stores."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bulkbackup import config
from bulkbackup.store import open_store
from tests.helpers import run_cli


@pytest.fixture
def filled(clean_env: None, store_url: str) -> None:
    store = open_store(config.load().store)
    store.put_bytes("octocat", b"[]", {"LastSync": "2026-11-28T17:00:00Z", "SyncdRepos": "1",
                                       "ReportedRepos": "3", "Error": "1 of 3 failed"})
    store.put_bytes("octocat/Hello-World.bundle", b"B" * 1500,
                    {"LastSync": "2026-11-28T17:00:01Z", "PushedAt": "2026-01-01T00:00:00Z",
                     "UpdatedAt": "2026-01-02T00:00:00Z"})
    store.put_bytes("octocat/Hello-World.zip", b"Z" * 700, {"LastSync": "2026-11-28T17:00:01Z"})
    store.put_bytes("octocat/broken.bundle", b"", {"LastSync": "2026-11-28T17:00:02Z",
                                                    "Error": "git clone failed: boom"})
    store.put_bytes("octocat/nothing.bundle", b"", {"LastSync": "2026-11-28T17:00:03Z",
                                                     "Error": "empty repository"})
    store.close()


def test_show_table(filled: None) -> None:
    proc = run_cli("show", "octocat")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "last sync        2026-11-28T17:00:00Z" in out
    assert "synced repos     1" in out and "reported repos   3" in out
    assert "error            1 of 3 failed" in out
    lines = {line.split()[0]: line for line in out.splitlines()[6:]}
    assert "2026-11-28T17:00:01Z" in lines["Hello-World"] and "1.5 kB" in lines["Hello-World"]
    assert "git clone failed: boom" in lines["broken"] and "0 B" in lines["broken"]
    assert "empty repository" in lines["nothing"]


def test_show_json(filled: None) -> None:
    proc = run_cli("show", "octocat", "--json")
    assert proc.returncode == 0, proc.stderr
    user = orjson.loads(proc.stdout)
    assert (user["last_sync"], user["syncd_repos"], user["reported_repos"]) == (
        "2026-11-28T17:00:00Z", 1, 3)
    repos = {r["name"]: r for r in user["repositories"]}
    assert repos["Hello-World"] == {
        "name": "Hello-World", "bundle_bytes": 1500, "zip_bytes": 700,
        "last_sync": "2026-11-28T17:00:01Z", "pushed_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-02T00:00:00Z", "error": None, "increments": 0,
        "increment_bytes": 0, "history_chains": 0,
        # A full bundle from before increments: its chain starts at its LastSync.
        "chain": "20261128T170001000000Z",
        # More than git (none here): not a wiki, no LFS objects, no releases.
        "wiki_of": None, "gist_of": None, "lfs_objects": 0, "lfs_bytes": 0, "lfs_error": None,
        "assets": 0, "asset_bytes": 0, "asset_files": [], "releases_error": None}
    assert repos["broken"]["bundle_bytes"] == 0 and repos["broken"]["error"].startswith("git")
    assert repos["nothing"]["error"] == "empty repository" and repos["nothing"]["zip_bytes"] is None


def test_show_unknown_user(clean_env: None, store_url: str) -> None:
    open_store(config.load().store).close()  # the store exists, without the user
    proc = run_cli("show", "nobody")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "bulkbackup: error: user nobody is not in the store"


def test_show_invalid_login(clean_env: None, store_url: str) -> None:
    proc = run_cli("show", "../x")
    assert proc.returncode == 2 and "invalid login" in proc.stderr


def test_show_never_creates_the_store(clean_env: None, store_url: str) -> None:
    """A read-only command on a missing bucket (or folder) says so; it does not create it."""
    proc = run_cli("show", "octocat")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    if store_url.startswith("s3://"):
        import boto3

        names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
        assert names == []
    else:
        assert not Path(store_url).exists()
