"""Releases and their assets end to end, on both stores: a real `bulkbackup sync` from the
stand-in asks for a repository's release list only when the listing says it may have
changed, stores each asset once (through GitHub's redirect to its asset storage, the token
to the git host only), records each hostile case on the part it concerns while the
repository is archived anyway, and `restore` writes the assets beside the mirror."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import ERROR
from bulkbackup.errors import InvalidName
from bulkbackup.names import is_key_segment
from bulkbackup.store import Store
from bulkbackup.testing import releases
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.forge_graphql import controls
from bulkbackup.testing.lfs import other_host
from bulkbackup.testing.releases import AssetSpec, ReleaseSpec
from tests.helpers import run_cli, start_serve, stop_serve

TOKEN = "ghp_RELtoken0123456789abcdefABCDEF012345"
BASIC = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
TARBALL = AssetSpec("tool-1.0.tar.gz", os.urandom(5000))
HUGE = AssetSpec("disk.iso", b"x", releases.HUGE)
ELSEWHERE = AssetSpec("evil.bin", b"evil\n", releases.ELSEWHERE)


def sync_with(forge: Forge, tmp_path: Path, login: str, run: str = "",
              env: dict[str, str] | None = None) -> str:
    storage = other_host(urlsplit(forge.url).netloc)
    cfg = tmp_path / "releases.yaml"
    cfg.write_text(f"github:\n  allow_http_token: true\n  asset_hosts: ['{storage}']\n"
                   f"run:\n  max_asset_mb: 1024\n{run}")
    env = {"GITHUB_TOKEN": TOKEN, "BULKBACKUP_CONFIG": str(cfg), **(env or {})}
    proc = run_cli("sync", *login.split(), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_releases_and_assets_are_stored_once_and_restored(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("rita", [RepoSpec("tool")])
    forge.add_release("rita", "tool", ReleaseSpec("../escape", assets=(AssetSpec("x", b"x"),)))
    forge.add_release("rita", "tool", ReleaseSpec(
        "v1.0", "One", "notes " * 5000, assets=(TARBALL, HUGE, ELSEWHERE)))
    out = sync_with(forge, tmp_path, "rita")
    assert "assets 1 stored, 3 not stored" in out
    assert forge.counters["api_releases"] == 1
    assert store.read_bytes(layout.asset_key("rita", "tool", "v1.0", TARBALL.name)) \
        == TARBALL.content
    listed = orjson.loads(store.read_bytes(layout.releases_key("rita", "tool")))
    assert [r["tag_name"] for r in listed] == ["v1.0", "../escape"]
    assert len(listed[0]["body"]) == 8000 and "author" not in listed[0]
    assert [a["name"] for a in listed[0]["assets"]] == [TARBALL.name, HUGE.name, ELSEWHERE.name]

    # The token went to the git host only; the redirect to the storage host without it.
    host = urlsplit(forge.url).netloc
    assert [(h, a) for h, _, a in forge.asset_seen] == [(host, BASIC), (other_host(host), None)]

    # Each hostile case recorded on its part; the repository and the user not failed.
    huge = store.head(layout.asset_key("rita", "tool", "v1.0", HUGE.name))
    assert huge is not None and huge.size == 0 and "max_asset_mb" in huge.get(ERROR)
    evil = store.head(layout.asset_key("rita", "tool", "v1.0", ELSEWHERE.name))
    assert evil is not None and evil.size == 0 and "another host" in evil.get(ERROR)
    assert not any(releases.ELSEWHERE_HOST in h for h, _, _ in forge.asset_seen)
    recorded = store.head(layout.releases_key("rita", "tool"))
    assert recorded is not None and "invalid release tag: '../escape'" in recorded.get(ERROR)
    assert not any(".." in i.key.split("/") for i in store.list("rita/"))
    bundle = store.head(layout.bundle_key("rita", "tool"))
    assert bundle is not None and bundle.size > 0 and not bundle.get(ERROR)
    user = store.head("rita")
    assert user is not None and not user.get(ERROR)

    # Nothing changed: neither the list nor an asset is asked for again.
    forge.reset_counters()
    sync_with(forge, tmp_path, "rita")
    assert forge.counters["api_releases"] == forge.counters["asset_download"] == 0

    # A new release: the list once, its one asset (redirect and storage), nothing else.
    forge.add_release("rita", "tool", ReleaseSpec("v2.0", assets=(AssetSpec("new", b"2\n"),)))
    sync_with(forge, tmp_path, "rita")
    assert forge.counters["api_releases"] == 1 and forge.counters["asset_download"] == 2
    assert store.read_bytes(layout.asset_key("rita", "tool", "v2.0", "new")) == b"2\n"

    proc = run_cli("restore", "rita", "--to", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 release assets" in proc.stdout
    user_dir = tmp_path / "r" / "rita"
    assert (user_dir / "tool.releases" / "v1.0" / TARBALL.name).read_bytes() == TARBALL.content
    assert (user_dir / "tool.releases" / "v2.0" / "new").read_bytes() == b"2\n"
    assert not (user_dir / "tool.releases" / "v1.0" / HUGE.name).exists()
    assert orjson.loads((user_dir / "tool.releases.json").read_bytes())[0]["tag_name"] == "v2.0"


def test_a_user_without_releases_costs_no_request_nor_point(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("nora", [RepoSpec("a"), RepoSpec("b")])
    forge.add_user("rel", [RepoSpec("c")])
    forge.add_release("rel", "c", ReleaseSpec("v1", assets=(AssetSpec("f", b"f\n"),)))
    sync_with(forge, tmp_path, "nora rel")
    # One query of 1 point listed both, and said which repository has releases: its list is
    # the one REST request; nora's repositories cost nothing more, nor any store object.
    assert (controls(forge).counters["requests"], controls(forge).counters["points"]) == (1, 1)
    assert forge.counters["api_releases"] == forge.counters["api"] == 1
    assert store.read_bytes(layout.asset_key("rel", "c", "v1", "f")) == b"f\n"
    assert not [i.key for i in store.list("nora/") if ".releases" in i.key]


def test_rest_asks_for_the_list_when_the_repository_changed(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("rest", [RepoSpec("tool")])
    forge.add_release("rest", "tool", ReleaseSpec("v1.0", assets=(TARBALL,)))
    rest = {"GITHUB_API": "rest"}
    sync_with(forge, tmp_path, "rest", env=rest)
    assert forge.counters["api_releases"] == 1
    assert store.read_bytes(layout.asset_key("rest", "tool", "v1.0", TARBALL.name)) \
        == TARBALL.content
    forge.reset_counters()
    sync_with(forge, tmp_path, "rest", env=rest)  # unchanged: not asked
    assert forge.counters["api_releases"] == forge.counters["asset_download"] == 0
    forge.push("rest", "tool", {"f": b"change\n"})
    sync_with(forge, tmp_path, "rest", env=rest)  # changed: asked, 304, nothing fetched
    assert forge.counters["api_releases"] == 1 and forge.counters["api_304"] >= 1
    assert forge.counters["asset_download"] == 0


def test_without_the_setting_nothing_is_asked(env: None, forge: Forge, store: Store,
                                              tmp_path: Path) -> None:
    forge.add_user("otto", [RepoSpec("tool")])
    forge.add_release("otto", "tool", ReleaseSpec("v1.0", assets=(TARBALL,)))
    sync_with(forge, tmp_path, "otto", "  releases: false\n")
    assert forge.counters["api_releases"] == 0
    assert store.head(layout.releases_key("otto", "tool")) is None


def test_show_stats_and_serve_list_and_download_the_assets(
        env: None, forge: Forge, store: Store, tmp_path: Path) -> None:
    forge.add_user("sara", [RepoSpec("tool")])
    forge.add_release("sara", "tool", ReleaseSpec("v1.0", assets=(TARBALL, ELSEWHERE)))
    sync_with(forge, tmp_path, "sara")
    proc = run_cli("show", "sara", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = orjson.loads(proc.stdout)["repositories"][0]
    assert (shown["assets"], shown["asset_bytes"]) == (1, len(TARBALL.content))
    assert shown["asset_files"] == [["v1.0", TARBALL.name, len(TARBALL.content)]]
    assert "evil.bin: refusing download URL" in shown["releases_error"]
    assert "release assets 1" in run_cli("show", "sara").stdout
    figures = orjson.loads(run_cli("stats", "--json").stdout)["more_than_git"]
    assert (figures["release_lists"], figures["assets"], figures["asset_bytes"]) == (
        1, 1, len(TARBALL.content))
    served = start_serve(dict(os.environ), tmp_path / "serve.log")
    try:
        page = served.get("/users/sara").text
        assert f"/users/sara/tool.releases/v1.0/{TARBALL.name}" in page
        got = served.get(f"/users/sara/tool.releases/v1.0/{TARBALL.name}")
        assert got.status_code == 200 and got.content == TARBALL.content
        assert 'filename="tool.v1.0.tool-1.0.tar.gz"' in got.headers["content-disposition"]
        listed = served.get("/users/sara/tool.releases.json")
        assert listed.status_code == 200 and orjson.loads(listed.content)[0]["tag_name"] == "v1.0"
        # The refused asset's marker is no download; nor is a path outside the layout.
        assert served.get(f"/users/sara/tool.releases/v1.0/{ELSEWHERE.name}").status_code == 404
        assert served.get("/users/sara/tool.releases/..%2F/x").status_code == 404
    finally:
        stop_serve(served)


def test_tags_and_asset_names_become_keys_only_as_safe_segments() -> None:
    for bad in ("..", ".", "", "a/b", "a\\b", "50%", "../x", "x\n", "x\u202e", " x", "é" * 101):
        assert not is_key_segment(bad), bad
        with pytest.raises(InvalidName):
            layout.asset_key("u", "r", bad, "ok")
    key = layout.asset_key("u", "r", "v1.0-rc.1+build", "tool 1.0 (linux).tar.gz")
    parsed = layout.parse_key(key)
    assert (parsed.kind, parsed.repo, parsed.tag, parsed.asset) == (
        layout.Kind.ASSET, "r", "v1.0-rc.1+build", "tool 1.0 (linux).tar.gz")
    assert layout.parse_key(layout.releases_key("u", "r")) == layout.StoreKey(
        "u", "r", layout.Kind.RELEASES)
    assert layout.parse_key("u/r.releases/../x").kind is layout.Kind.OTHER
    assert layout.file_name(layout.asset_key("u", "r", "v1", 'a"b;c.zip')) == "r.v1.a_b_c.zip"
