"""Backing up users (`bulkbackup sync`): real git over smart HTTP from the GitHub stand-in,
both stores (local folder and moto_server over HTTP)."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import orjson
import pytest

from bulkbackup.store import Store
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import git, read, refs_of, run_cli


@pytest.fixture(autouse=True)
def rest_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """These cases test the REST client (github.api: rest); GraphQL's are in test_graphql.py
    and test_run_graphql.py."""
    monkeypatch.setenv("GITHUB_API", "rest")


TOKEN = "ghp_SECRETtoken0123456789abcdefABCDEF0123"


def _config_with(text: str) -> str:
    """A config file with ``text`` (YAML), for one command."""
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".yaml")
    with open(fd, "w") as f:
        f.write(text)
    return name


def sync(*logins: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("sync", *logins, env=extra)


def test_branches_tags_bundle_and_zip_round_trip(
    env: None, forge: Forge, store: Store, tmp_path: Path
) -> None:
    forge.add_user("octocat", [RepoSpec("Hello-World", branches={"dev": {"d.txt": b"dev\n"}},
                                        tags=["v1.0"])])
    proc = sync("octocat")
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "hw.bundle"
    bundle.write_bytes(read(store, "octocat/Hello-World.bundle"))
    git("init", "-q", str(tmp_path / "verifier"))  # git 2.39 verifies inside a repository
    git("bundle", "verify", str(bundle), cwd=tmp_path / "verifier")
    restored = tmp_path / "restored.git"
    git("clone", "--mirror", str(bundle), str(restored))
    source = forge.root / "git" / "octocat" / "Hello-World.git"
    assert refs_of(restored) == refs_of(source)
    assert {"refs/heads/main", "refs/heads/dev", "refs/tags/v1.0"} <= set(refs_of(restored))
    # The zip holds the default branch under <repo>-<branch>/, byte for byte.
    archive = zipfile.ZipFile(io.BytesIO(read(store, "octocat/Hello-World.zip")))
    names = [n for n in archive.namelist() if not n.endswith("/")]
    assert names and all(n.startswith("Hello-World-main/") for n in names)
    tree = git("ls-tree", "-r", "--name-only", "-z", "main", cwd=source).split("\0")
    assert sorted(n.removeprefix("Hello-World-main/") for n in names) == sorted(filter(None, tree))
    for name in names:
        path = name.removeprefix("Hello-World-main/")
        blob = subprocess.run(["git", "cat-file", "blob", f"main:{path}"], cwd=source,
                              check=True, capture_output=True).stdout
        assert archive.read(name) == blob
    meta = store.head("octocat/Hello-World.bundle")
    assert meta is not None
    listed = orjson.loads(read(store, "octocat"))
    assert meta.get("PushedAt") == listed[0]["pushed_at"]
    assert meta.get("UpdatedAt") == listed[0]["updated_at"]
    assert meta.get("LastSync").endswith("Z") and not meta.get("Error")
    user = store.head("octocat")
    assert user is not None
    assert (user.get("SyncdRepos"), user.get("ReportedRepos"), user.get("Error")) == ("1", "1", "")


def test_many_pages_empty_failed_and_unchanged(env: None, forge: Forge, store: Store) -> None:
    # github.page_size 5: three pages from 12 repositories (GitHub's 100 would need 207).
    small_pages = {"BULKBACKUP_CONFIG": _config_with("github:\n  page_size: 5\n")}
    repos = [RepoSpec(f"r{i:03d}") for i in range(10)]
    repos += [RepoSpec("empty", empty=True), RepoSpec("gone", missing=True)]
    forge.add_user("many", repos)
    proc = sync("many", extra=small_pages)
    assert proc.returncode == 0  # one repository failed: recorded, a result
    assert "1 failed" in proc.stdout
    listed = orjson.loads(read(store, "many"))
    assert len(listed) == 12  # three pages, as the API returned them
    # and, REST's listing not saying which repositories have releases, one release list for
    # each repository archived (backup/releases.py); none is stored (there are none); and
    # the user's gist list (run.gists: one request, none stored for a user without gists)
    assert forge.counters["api_200"] == 3 + 10 + 1 and forge.counters["api_releases"] == 10
    assert forge.counters["api_gists"] == 1 and store.head("many/gists.json") is None
    assert not [i for i in store.list("many/") if ".releases" in i.key]
    keys = {i.key for i in store.list("many/")}
    assert len([k for k in keys if k.endswith(".bundle")]) == 12
    empty = store.head("many/empty.bundle")
    assert empty is not None and empty.size == 0 and empty.get("Error") == "empty repository"
    assert "many/empty.zip" not in keys
    gone = store.head("many/gone.bundle")
    assert gone is not None and gone.size == 0 and gone.get("Error").startswith("git clone")
    user = store.head("many")
    assert user is not None
    assert user.get("SyncdRepos") == "10" and user.get("ReportedRepos") == "12"
    assert "gone" in user.get("Error")
    assert forge.counters["info_refs"] == 12  # one clone each, `empty` and `gone` included

    # Second sync: the listing changed (one push), so pages are fetched again, but only the
    # pushed repository (and the failed one) is cloned.
    forge.push("many", "r007", {"new.txt": b"new\n"})
    forge.reset_counters()
    proc = sync("many", extra=small_pages)
    assert forge.counters["api_200"] == 3 + 1 + 1  # the release list of r007, the gist list
    # r007 is fetched once: what is new since its archive (an increment; its zip is made
    # from the repository the increment was proved in); `gone` fails again; nothing else.
    assert forge.clones("many", "r007") == 1
    assert forge.clones("many", "r008") == 0
    assert forge.counters["info_refs"] == 2


def test_not_modified_listing_clones_nothing(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("quiet", [RepoSpec("a"), RepoSpec("b")])
    assert sync("quiet").returncode == 0
    first = store.head("quiet")
    assert first is not None and first.get("ListingETags")
    forge.reset_counters()
    proc = sync("quiet")
    assert proc.returncode == 0, proc.stderr
    assert "304" in proc.stdout
    # The pages and the gist list (run.gists) answered 304: free.
    assert forge.counters["api_304"] == 2 and forge.counters["api_200"] == 0
    assert forge.counters["info_refs"] == 0 and forge.counters["upload_pack"] == 0
    after = store.head("quiet")
    assert after is not None and after.get("SyncdRepos") == "2"
    assert after.get("LastSync") >= first.get("LastSync")


def test_rate_limit_waits_and_succeeds(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("patient", [RepoSpec("a")])
    forge.rate_limit(requests=2, reset_in_s=2)
    proc = sync("patient")
    assert proc.returncode == 0, proc.stderr
    assert "rate limit" in proc.stderr  # the wait is logged once, with its time
    assert forge.counters["api_403"] >= 1
    user = store.head("patient")
    assert user is not None and not user.get("Error") and user.get("SyncdRepos") == "1"


def test_secondary_rate_limit_honours_retry_after(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("second", [RepoSpec("a")])
    forge.rate_limit(requests=1, reset_in_s=1, secondary=True)
    proc = sync("second")
    assert proc.returncode == 0, proc.stderr
    assert forge.counters["api_429"] == 1


def test_token_rotation_switches_to_a_token_with_budget(
    env: None, forge: Forge, store: Store
) -> None:
    forge.add_user("rot", [RepoSpec("a")])
    forge.set_token_budget("tok-a", remaining=0, reset_in_s=3600)
    forge.set_token_budget("tok-b", remaining=100, reset_in_s=3600)
    proc = sync("rot", extra={"GITHUB_TOKENS": "tok-a,tok-b"})
    assert proc.returncode == 0, proc.stderr
    assert any("tok-b" in h for h in forge.auth_headers_seen)


def test_5xx_then_success_and_5xx_for_good(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("flaky", [RepoSpec("a")])
    forge.fail_5xx(2)
    cfg_extra = {"BULKBACKUP_CONFIG": _config_with("github:\n  backoff_s: 0.05\n")}
    proc = sync("flaky", extra=cfg_extra)
    assert proc.returncode == 0, proc.stderr
    assert forge.counters["api_5xx"] == 2
    forge.fail_5xx(100)
    proc = sync("flaky", extra={"BULKBACKUP_CONFIG": _config_with(
        "github:\n  backoff_s: 0.01\n  max_retries: 2\n")})
    assert proc.returncode == 0 and "1 with errors" in proc.stderr  # recorded
    user = store.head("flaky")
    assert user is not None and "502" in user.get("Error")
    assert user.get("SyncdRepos") == "1"  # the archive is still there and counted
    assert store.head("flaky/a.bundle") is not None


def test_404_user_is_recorded_as_gone(env: None, forge: Forge, store: Store) -> None:
    proc = sync("ghost")
    assert proc.returncode == 0 and "1 with errors" in proc.stderr  # recorded
    user = store.head("ghost")
    assert user is not None and "404" in user.get("Error")
    assert read(store, "ghost") == b"[]"


def test_untrusted_names_and_urls_are_refused(
    env: None, forge: Forge, store: Store, tmp_path: Path
) -> None:
    forge.add_user("evil", [RepoSpec("ok")])
    forge.add_raw_repo_entry("evil", {"name": "../x", "clone_url": f"{forge.url}/evil/ok.git",
                                      "pushed_at": "2026-01-01T00:00:00Z"})
    forge.add_raw_repo_entry("evil", {"name": "elsewhere", "clone_url": "http://evil.example/x.git",
                                      "pushed_at": "2026-01-01T00:00:00Z"})
    forge.add_raw_repo_entry("evil", {"name": "local", "clone_url": "file:///etc",
                                      "pushed_at": "2026-01-01T00:00:00Z"})
    proc = sync("evil")
    assert proc.returncode == 0 and "1 with errors" in proc.stderr  # recorded
    keys = {i.key for i in store.list("")}
    assert "evil/ok.bundle" in keys
    assert not any(".." in k for k in keys)
    assert not (tmp_path / "x.bundle").exists()
    for name in ("elsewhere", "local"):
        head = store.head(f"evil/{name}.bundle")
        assert head is not None and head.size == 0 and "refusing clone URL" in head.get("Error")
    user = store.head("evil")
    assert user is not None and "invalid repository name" in user.get("Error")


def test_a_good_archive_is_never_replaced_by_a_failure(
    env: None, forge: Forge, store: Store
) -> None:
    forge.add_user("keep", [RepoSpec("a")])
    assert sync("keep").returncode == 0
    good = read(store, "keep/a.bundle")
    forge.push("keep", "a", {"x.txt": b"x\n"})
    (forge.root / "git" / "keep" / "a.git").rename(forge.root / "git" / "keep" / "moved.git")
    assert sync("keep").returncode == 0  # the failure is recorded
    assert read(store, "keep/a.bundle") == good
    head = store.head("keep/a.bundle")
    # An increment's fetch failed (the repository's archive is there to build on).
    assert head is not None and head.get("Error").startswith("git fetch failed")
    (forge.root / "git" / "keep" / "moved.git").rename(forge.root / "git" / "keep" / "a.git")
    assert sync("keep").returncode == 0  # retried: stored times still differ from the API's
    head = store.head("keep/a.bundle")
    # Stored now, as an increment on the good archive (which stays as it was).
    assert head is not None and not head.get("Error") and head.get("Increments") == "1"
    assert read(store, "keep/a.bundle") == good


def test_too_large_and_forks(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("big", [RepoSpec("huge", size_kb=5_000_000), RepoSpec("fork", fork=True)])
    proc = sync("big")
    assert proc.returncode == 0 and "1 with errors" in proc.stderr  # recorded
    huge = store.head("big/huge.bundle")
    assert huge is not None and huge.size == 0 and "run.max_repo_kb" in huge.get("Error")
    assert forge.clones("big", "huge") == 0
    assert store.head("big/fork.bundle") is not None  # forks are included by default
    proc = sync("big", extra={"BULKBACKUP_CONFIG": _config_with("run:\n  skip_forks: true\n")})
    assert forge.clones("big", "fork") == 1  # not cloned again


def test_hung_clone_is_killed_by_the_git_timeout(env: None, forge: Forge, store: Store) -> None:
    forge.stall_s = 60
    forge.add_user("slow", [RepoSpec("stuck", stall=True), RepoSpec("fine")])
    proc = sync("slow", extra={"BULKBACKUP_CONFIG": _config_with("run:\n  git_timeout_s: 2\n")})
    assert proc.returncode == 0 and "1 with errors" in proc.stderr  # recorded
    stuck = store.head("slow/stuck.bundle")
    assert stuck is not None and "timed out" in stuck.get("Error")
    fine = store.head("slow/fine.bundle")
    assert fine is not None and fine.size > 0


def test_token_never_stored_logged_or_in_the_mirror(
    env: None, forge: Forge, store: Store, tmp_path: Path
) -> None:
    forge.add_user("secret", [RepoSpec("a"), RepoSpec("gone", missing=True)])
    forge.add_raw_repo_entry("secret", {"name": "bad", "clone_url": "http://evil.example/x.git"})
    work = tmp_path / "work"
    cfg = _config_with(f"run:\n  work_dir: {work}\n")
    proc = sync("secret", extra={"GITHUB_TOKEN": TOKEN, "BULKBACKUP_CONFIG": cfg,
                                 "BULKBACKUP_DEBUG": "1"})
    assert TOKEN not in proc.stdout + proc.stderr
    assert any(TOKEN in h for h in forge.auth_headers_seen)  # it was used, for the API
    for info in store.list(""):
        head = store.head(info.key)
        assert head is not None
        assert TOKEN not in read(store, info.key).decode("latin-1")
        assert TOKEN not in repr(head.metadata)
    # Work files are gone; nothing under the work dir mentions the token.
    leftovers = [p for p in work.rglob("*") if p.is_file()] if work.exists() else []
    for path in leftovers:
        assert TOKEN.encode() not in path.read_bytes()


def test_sync_refuses_invalid_logins(env: None) -> None:
    proc = sync("../etc")
    assert proc.returncode == 2
    assert "invalid login" in proc.stderr and "Traceback" not in proc.stderr


def test_renamed_user_redirect_is_followed_on_the_api_host(
    env: None, forge: Forge, store: Store
) -> None:
    forge.add_user("new-name", [RepoSpec("a")])
    forge.renamed["old-name"] = "new-name"
    proc = sync("old-name")
    assert proc.returncode == 0, proc.stderr
    assert forge.counters["api_301"] == 1
    head = store.head("old-name/a.bundle")  # kept under the login that is tracked
    assert head is not None and head.size > 0


def test_pagination_to_another_host_is_refused(env: None, forge: Forge, store: Store) -> None:
    forge.add_user("paged", [RepoSpec(f"r{i}") for i in range(101)])
    forge.link_host = "evil.example"
    proc = sync("paged", extra={"GITHUB_TOKEN": TOKEN})
    assert proc.returncode == 0 and "1 with errors" in proc.stderr  # recorded
    user = store.head("paged")
    assert user is not None and "refusing a link to another host" in user.get("Error")
    assert forge.counters["info_refs"] == 0  # nothing cloned from a half listing


def test_api_values_that_cannot_be_metadata_are_not_stored(
    env: None, forge: Forge, store: Store
) -> None:
    # Oversized or malformed values would exceed the store's metadata limit on every attempt,
    # and the user would never complete: they are dropped, and the user is synced.
    forge.add_user("odd", [RepoSpec("a")])
    with forge.lock:
        entry = forge.users["odd"][0]
        entry["pushed_at"] = "2026-01-01T00:00:00Z" + "x" * 3000
        entry["updated_at"] = {"not": "a time"}
    forge.etag_suffix = "y" * 3000
    proc = sync("odd")
    assert proc.returncode == 0, proc.stderr
    bundle = store.head("odd/a.bundle")
    assert bundle is not None and bundle.size > 0
    assert bundle.get("PushedAt") == "" and bundle.get("UpdatedAt") == ""
    user = store.head("odd")
    assert user is not None and not user.get("Error") and user.get("ListingETags") == ""
    forge.reset_counters()
    assert sync("odd").returncode == 0
    assert forge.counters["api_304"] == 0  # no ETag was kept to ask with
    assert forge.counters["info_refs"] == 1  # unknown times: archived again, not "unchanged"


def test_a_users_work_folder_holds_one_repository_at_a_time(
    env: None, forge: Forge, store: Store, tmp_path: Path
) -> None:
    """A bundle and a zip are removed from the work folder once stored: a user with many
    repositories needs the disk of one, not of all. The sync is SIGKILLed right after its
    third store write (the second repository's zip) to look at the folder mid-user."""
    forge.add_user("disk", [RepoSpec(name) for name in ("a", "b", "c")])
    work = tmp_path / "work"
    cfg = _config_with(f"run:\n  work_dir: {work}\n")
    proc = sync("disk", extra={"BULKBACKUP_CONFIG": cfg, "BULKBACKUP_TEST_KILL_AFTER_WRITES": "3"})
    assert proc.returncode == -9, proc.stderr
    left = sorted(p.name for p in work.rglob("*") if p.suffix in (".bundle", ".zip"))
    assert len(left) == 2 and len({name.split(".")[0] for name in left}) == 1, left
