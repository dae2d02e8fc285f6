"""The repository page of `bulkbackup serve`: every archived state, each rebuilt by the
commands it shows, pasted into a shell (plain git from the downloads, and `bulkbackup restore
--at`). The history is made by real `bulkbackup sync`s from the stand-in: a chain of three
increments (on a big base: the half-size rule never applies), consolidated by
`run.max_increments: 3` (kept), then a new chain with one increment; served by a real
`bulkbackup serve` over HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import canonical
from bulkbackup.config import StoreSettings
from bulkbackup.git.bundles import write_header
from bulkbackup.store.local import LocalStore
from bulkbackup.store.s3 import S3Store
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.web.restore_cmds import state_commands
from bulkbackup.web.states import PARTS_LISTED, RepoStates, StateId
from tests.browser import find_chromium, open_browser, wait_download
from tests.helpers import base_env, git, next_second, refs_of, start_serve, stop_serve, sync
from tests.pages import Commands

CONFIG = ("run:\n  lock_ttl_s: 2\n  claim_target_s: 1.0\n  max_increments: 3\n"
          "github:\n  backoff_s: 0.05\n  max_retries: 1\n")


BIG = os.urandom(400_000)  # incompressible: the increments stay far smaller than the bundle


@dataclass
class History:
    env: dict[str, str]
    tmp: Path
    store: Path
    refs: list[dict[str, str]]  # the stand-in's refs after each sync, oldest first


@pytest.fixture(scope="module")
def history(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """bob/hist: six syncs, six states: chain 1 (base, three increments: a push, a deleted
    branch, a new tag), kept when the fifth sync consolidated it, and chain 2 (its base and
    one increment). A second between syncs: each state has its own `restore --at` second."""
    tmp = tmp_path_factory.mktemp("states")
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    store = tmp / "backup" / "github.com"
    with Forge(tmp / "forge") as forge:
        forge.add_user("bob", [RepoSpec("hist", files={"a.txt": b"a\n", "big.bin": BIG},
                                        branches={"dev": {"d.txt": b"d\n"}}, tags=["v1"])])
        env = base_env(tmp, redis_server, str(store))
        Path(env["BULKBACKUP_CONFIG"]).write_text(CONFIG)
        env["GITHUB_API_URL"] = forge.url
        bare = forge.git_root / "bob" / "hist.git"
        changes: list[Callable[[], None]] = [
            lambda: forge.push("bob", "hist", {"a.txt": b"a2\n"}),
            lambda: forge.delete_ref("bob", "hist", "refs/heads/dev"),
            lambda: forge.add_tag("bob", "hist", "v2"),
            lambda: forge.push("bob", "hist", {"b.txt": b"b\n"}),
            lambda: forge.push("bob", "hist", {"c.txt": b"c\n"}),
        ]
        refs = []
        for change in [_nothing, *changes]:
            change()
            sync("bob", env)
            refs.append(refs_of(bare))
            next_second()  # each state its own `restore --at` second
    client.zadd("tracked", {"github.com/bob": 1.0})
    client.close()
    yield History(env, tmp, store, refs)


def _nothing() -> None:
    pass


def _shell_env(history: History, bin_dir: Path) -> dict[str, str]:
    """A shell as a person has it: `bulkbackup` on PATH, the server's settings."""
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "bulkbackup"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m bulkbackup "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in history.env.items() if not k.startswith("GIT_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _paste(commands: list[str], folder: Path, env: dict[str, str]) -> None:
    folder.mkdir()
    for cmd in commands:  # as pasted, one after the other, in one empty folder
        proc = subprocess.run(["bash", "-c", cmd], cwd=folder, capture_output=True,
                              text=True, timeout=120, env=env, check=False)
        assert proc.returncode == 0, (cmd, proc.stderr)


def test_every_state_is_listed_and_its_commands_rebuild_it(history: History) -> None:
    served = start_serve(history.env, history.tmp / "serve.log")
    try:
        states: list[dict[str, Any]] = []
        cursor, pages = "", 0
        while True:  # pages of four: the second holds the kept chain's older states
            doc = served.get(f"/api/users/bob/hist/states?limit=4&cursor={cursor}").json()
            states += doc["states"]
            pages += 1
            if doc["next"] is None:
                break
            cursor = doc["next"]
        assert pages == 2
        assert [(s["increments"], s["current_chain"]) for s in states] == [
            (1, True), (0, True), (3, False), (2, False), (1, False), (0, False)]
        assert states[0]["latest"] and not any(s["latest"] for s in states[1:])
        chains = {s["chain"] for s in states}
        assert len(chains) == 2 and len({s["id"] for s in states}) == 6
        # What moved, read from the bundles' headers: the deleted branch, the new tag.
        moved = {s["increments"]: s["moved"] for s in states if not s["current_chain"]}
        assert moved[2] == [{"ref": "refs/heads/dev", "old": moved[2][0]["old"], "new": None}]
        assert [m["ref"] for m in moved[3]] == ["refs/tags/v2"]
        assert [m["ref"] for m in moved[0]] == sorted(history.refs[0])  # the oldest: all new
        env = _shell_env(history, history.tmp / "bin")
        expected = list(reversed(history.refs))
        for i, (state, refs) in enumerate(zip(states, expected, strict=True)):
            commands = state["commands"]
            assert commands["restore"], state
            # Plain git from the downloads.
            work = history.tmp / f"git-{i}"
            _paste(commands["git"], work, env)
            git("fsck", "--full", "--no-dangling", cwd=work / "hist.git")
            assert refs_of(work / "hist.git") == refs, state["id"]
            assert (work / "hist" / ".git").is_dir()
            # `bulkbackup restore --at`, with the server's settings.
            at = history.tmp / f"at-{i}"
            _paste([commands["restore"]], at, env)
            assert refs_of(at / "bob" / "hist.git") == refs, state["id"]
            assert len(state["downloads"]) == 1 + int(state["increments"])
        # The HTML pages show the same commands, no other (pasted above, every one).
        found = []
        for query in ("limit=4", f"limit=4&cursor={cursor}"):
            page = served.get(f"/users/bob/hist/states?{query}")
            assert page.status_code == 200
            parser = Commands()
            parser.feed(page.text)
            found += parser.found
            assert ('rel="next"' in page.text) == (query == "limit=4")
        assert found == [c for s in states for c in [s["commands"]["restore"],
                                                     *s["commands"]["git"]]]
        # The loop form (three increments): pasted above; on the page too.
        assert "$(seq 1 3)" in " ".join(states[2]["commands"]["git"])
        user = served.get("/users/bob")
        assert 'href="/users/bob/hist/states"' in user.text
        for bad in ("/users/bob/hist/states?cursor=nonsense", "/users/bob/none/states",
                    "/users/bob/..%2Fx/states", "/api/users/nobody/hist/states"):
            assert served.get(bad).status_code == 404, bad
    finally:
        stop_serve(served)


def _copy(src_root: Path, root: Path) -> LocalStore:
    """A copy of the store, made through its API (its metadata sidecars are tied to the
    files' inodes: a file copy would lose them)."""
    src = LocalStore(StoreSettings(url=str(src_root)))
    root.mkdir(parents=True)
    store = LocalStore(StoreSettings(url=str(root)))
    for info in src.list():
        head, path = src.head(info.key), src.local_path(info.key)
        assert head is not None and path is not None
        store.put_file(info.key, path, canonical(head.metadata))
    return store


def test_a_page_of_states_costs_the_same_store_requests_at_10000_increments(
        history: History, tmp_path: Path) -> None:
    """A chain of 100 and one of 10 000 increments (the metadata's bound): the first page and
    a page deep in the history read the same number of objects; nothing is listed."""
    counts = []
    for n in (100, 10_000):
        store = _copy(history.store, tmp_path / f"n{n}")
        key = layout.bundle_key("bob", "hist")
        head = store.head(key)
        assert head is not None
        chain = head.get("Chain")
        one = layout.part_key("bob", "hist", chain, 1)
        for seq in (*range(n - 25, n + 1), *range(n // 2 - 25, n // 2 + 1)):
            if seq > 1:
                store.copy(one, layout.part_key("bob", "hist", chain, seq))
        store.replace_metadata(key, layout.updated_metadata(head, {"Increments": str(n)}))
        reader = RepoStates()
        try:
            for after in (None, StateId(chain, n // 2)):
                before = store.request_count
                page = reader.page(store, "bob", "hist", after, 20)
                assert page is not None and len(page.states) == 20
                assert page.states[-1].id.seq == (n - 19 if after is None else n // 2 - 20)
                counts.append(store.request_count - before)
                # What the page shows of a state does not grow with its increments either.
                top = page.states[0]
                assert len(top.part_keys()) == min(top.parts_total, PARTS_LISTED)
                assert top.part_keys()[-1].endswith(f"/{top.id.seq:06d}.bundle")
                assert len(state_commands("http://x", "bob", "hist", top.base_key,
                                          top.id.chain, top.id.seq)) == 3
        finally:
            reader.close()
    assert counts[0] == counts[2] and counts[1] == counts[3], counts
    # The base's HEAD, then per state a HEAD and a header, and the older neighbour's (a
    # page deep in: the newer neighbour's HEAD too). No listing.
    assert counts == [1 + 2 * 21, 1 + 2 * 21 + 1] * 2, counts


def test_the_repository_page_in_a_browser(history: History, tmp_path: Path) -> None:
    """Chromium: from the user page to the repository's states; a kept state's first part
    downloaded by a click is the stored object, and its commands, as the page shows them,
    rebuild it."""
    chromium = find_chromium()
    served = start_serve(history.env, history.tmp / "serve-browser.log")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    print(f"\nbrowser screenshots: {artifacts}")
    try:
        kept, commands, got = _browse(chromium, served.url, tmp_path, artifacts)
        chain = kept.split("-")[0]
        stored = LocalStore(StoreSettings(url=str(history.store)))
        assert got.read_bytes() == stored.read_bytes(layout.part_key("bob", "hist", chain, 0))
        # The commands as the browser shows them, pasted: git, then `restore --at`.
        env = _shell_env(history, tmp_path / "bin")
        _paste(commands[1:], tmp_path / "pasted", env)
        assert refs_of(tmp_path / "pasted" / "hist.git") == history.refs[3]
        _paste(commands[:1], tmp_path / "at", env)
        assert refs_of(tmp_path / "at" / "bob" / "hist.git") == history.refs[3]
    finally:
        stop_serve(served)


def _browse(chromium: tuple[str, str], url: str, tmp_path: Path, artifacts: Path
            ) -> tuple[str, list[str], Path]:
    """The user page, then the repository's: (the kept chain's newest state, its commands
    as shown, its base part downloaded by a click)."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = open_browser(chromium, tmp_path / "profile", downloads)
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(url + "/users/bob")
        wait.until(ec.presence_of_element_located((By.ID, "repos")))
        driver.find_element(By.CSS_SELECTOR, "a.states").click()
        wait.until(ec.presence_of_element_located((By.ID, "states")))
        assert driver.current_url.endswith("/users/bob/hist/states")
        driver.save_screenshot(str(artifacts / "states.png"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#states tr.state")
        assert len(rows) == 6
        kept = rows[2].get_attribute("data-state")  # the kept chain with its 3 increments
        assert kept is not None and kept.endswith("-3")
        restore = driver.find_element(
            By.XPATH, f"//tr[@id='state-{kept}']/following-sibling::tr[1]")
        commands = [c.text for c in restore.find_elements(By.CSS_SELECTOR, "code[data-cmd]")]
        links = restore.find_elements(By.CSS_SELECTOR, "a.dl")
        assert len(links) == 4  # the kept base and its three increments
        links[0].click()
        got = wait_download(downloads, f"hist.{kept.split('-')[0]}.000000.bundle")
    finally:
        driver.quit()
    return kept, commands, got


def _bundle(refs: int) -> bytes:
    """A bundle's header with ``refs`` refs (and the start of a pack)."""
    out = io.BytesIO()
    write_header(out, [], {f"refs/tags/t{i:06d}": f"{i:040x}" for i in range(refs)}, None)
    return out.getvalue() + b"PACK"


def test_headers_are_read_in_a_bounded_range(tmp_path: Path) -> None:
    """A header past the first 64 KiB is read again up to 2 MiB; past that its refs are
    shown as not read (and nothing else fails)."""
    store = LocalStore(StoreSettings(url=str(tmp_path)))
    chain = "20260101T000000000000Z"
    store.put_bytes("eve", b"[]", {})
    store.put_bytes(layout.bundle_key("eve", "r"), _bundle(3000),
                    {"Chain": chain, "Increments": "2", "LastSync": "2026-01-01T00:00:00Z"})
    for seq, refs in ((1, 40_000), (2, 1)):
        store.put_bytes(layout.part_key("eve", "r", chain, seq), _bundle(refs),
                        {"LastSync": f"2026-01-0{seq + 1}T00:00:00Z"})
    reader = RepoStates()
    try:
        page = reader.page(store, "eve", "r", None, 20)
    finally:
        reader.close()
    assert page is not None
    assert [(s.id.seq, s.refs) for s in page.states] == [(2, 1), (1, None), (0, 3000)]
    assert page.states[1].problem == "header above 2 MiB: refs not read"
    assert page.states[0].moved == () and page.states[2].moved_more == 3000 - 20
    assert [s.at for s in page.states] == [
        "2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"]


def test_the_states_read_from_s3_are_the_local_stores(history: History, s3_endpoint: str
                                                      ) -> None:
    """The same archive on moto_server: the same states, page after page (S3's listing of the
    kept chains, its ranged reads)."""
    local = LocalStore(StoreSettings(url=str(history.store)))
    s3 = S3Store(StoreSettings(url="s3://states"))
    for info in local.list():
        head, path = local.head(info.key), local.local_path(info.key)
        assert head is not None and path is not None
        s3.put_file(info.key, path, canonical(head.metadata))
    seen = []
    for store in (local, s3):
        reader = RepoStates()
        states = []
        try:
            after = None
            while True:
                page = reader.page(store, "bob", "hist", after, 4)
                assert page is not None
                states += page.states
                if page.next is None:
                    break
                after = page.next
        finally:
            reader.close()
        seen.append([(s.id, s.at, s.size, s.refs, s.moved, s.base_key) for s in states])
    assert seen[0] == seen[1] and len(seen[0]) == 6
