"""`bulkbackup serve`: a real server process, over real HTTP, on data made by a real run.

One archive (a `bulkbackup run` against the GitHub stand-in into a local store) is built per
module and served by one `bulkbackup serve` process; the tests read it through a real HTTP
client. The outage tests start their own redis-server, store and server.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
import redis
from markupsafe import escape

from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts
from bulkbackup.queue.locks import LockKeeper
from bulkbackup.testing import services
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port
from bulkbackup.web import server
from tests.helpers import (
    SERVE_TOKEN,
    WORKER_HOST,
    Served,
    base_env,
    remove_object,
    rows_by_login,
    run_backup,
    run_cli,
    start_serve,
    stop_serve,
)

XSS = "<script>alert('xss')</script>"


# -- the archive's users -----------------------------------------------------------------------


def fill_forge(forge: Forge) -> None:
    """alice: a repository, an empty one, one whose clone fails with a hostile description;
    bob: two repositories. `gone-user` is tracked but unknown to the forge."""
    forge.add_user("alice", [RepoSpec("hello", files={"README.md": b"hello from alice\n"}),
                             RepoSpec("empty-repo", empty=True),
                             RepoSpec("xss", missing=True)])
    forge.add_user("bob", [RepoSpec("one"), RepoSpec("two")])
    with forge.lock:
        entry = next(e for e in forge.users["alice"] if e["name"] == "xss")
        entry["description"] = XSS


# -- the served archive -----------------------------------------------------------------------


@dataclass
class Archive:
    served: Served
    r: redis.Redis
    store: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """The module's archive, in a redis-server of its own: a test that flushes the session's
    Redis (the redis_url fixture) cannot empty it under the module's later tests."""
    tmp = tmp_path_factory.mktemp("serve")
    redis_proc, redis_server = services.start_redis(tmp / "redis")
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    store = tmp / "backup" / "github.com"
    with Forge(tmp / "forge") as forge:
        fill_forge(forge)
        env = base_env(tmp, redis_server, str(store))
        env["GITHUB_API_URL"] = forge.url
        run_backup(env, ["alice", "bob", "gone-user"])
    client.zadd("tracked", {"github.com/unsynced-user": float("-inf")})
    served = start_serve({**env, "BULKBACKUP_ADMIN_TOKEN": SERVE_TOKEN}, tmp / "serve.log")
    yield Archive(served, client, store, env)
    stop_serve(served)
    client.close()
    redis_proc.terminate()
    redis_proc.wait(10)


def test_stats_dashboard_and_pictures(archive: Archive) -> None:
    doc = archive.served.get("/api/stats").json()
    for key in ("tracked", "never_synced", "due", "claimed", "synced", "errors", "repos",
                "bytes", "rates", "freshness", "last_run"):
        assert key in doc, key
    assert doc["tracked"] == 4 and doc["never_synced"] == 1 and doc["claimed"] == 0
    assert doc["synced"] == 3 and doc["due"] == 1
    assert doc["repos"] == 3 and doc["bytes"] > 0 and doc["errors"] == 2  # alice, gone-user
    assert doc["freshness"] == {"never": 1, "lt_1d": 3, "lt_7d": 0, "lt_30d": 0, "older": 0}
    assert doc["last_run"]["users"] == 3
    # The completion script counted each synced user in its minute.
    assert sum(doc["series"]["users_per_minute"]) == 3
    assert doc["rates"]["60m"]["users"] > 0 and doc["rates"]["60m"]["repos"] > 0
    page = archive.served.get("/")
    assert page.status_code == 200 and 'id="tracked">4<' in page.text
    assert page.text.count("<svg") == 2 and page.text.count('class="bar"') == 60 + 5
    assert "users synced per minute" in page.text and "&lt; 1 day" in page.text
    assert 'id="add-form"' in page.text  # an admin token is configured
    assert '<link rel="icon" href="/favicon.ico"' in page.text
    icon = archive.served.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg")


def test_users_list_statuses(archive: Archive) -> None:
    doc = archive.served.get("/api/users").json()
    assert doc["next"] is None
    rows = rows_by_login(doc)
    assert set(rows) == {"alice", "bob", "gone-user", "unsynced-user"}
    assert rows["bob"] == {"login": "bob", "status": "synced", "badge": "synced",
                           "last_sync": rows["bob"]["last_sync"], "syncd_repos": 2,
                           "reported_repos": 2, "error": None}
    # The contract's four statuses; the badge tells 1 of 3 repositories failing (partial)
    # from a login GitHub does not know (gone). `error` is the stored Error's text or null.
    alice, gone = rows["alice"], rows["gone-user"]
    assert (alice["status"], alice["badge"], alice["syncd_repos"]) == ("error", "partial", 1)
    reason = str(alice["error"])
    assert reason.startswith("1 of 3 repositories failed: ")
    assert (gone["status"], gone["badge"]) == ("error", "gone")
    assert "not found on GitHub" in str(gone["error"])
    assert rows["unsynced-user"]["status"] == "unsynced"
    assert {u["status"] for u in doc["users"]} <= {"synced", "syncing", "unsynced", "error"}
    # The page shows the badges and the reasons (shortened), not "yes".
    listing = archive.served.get("/users").text
    assert 'class="badge partial">partial<' in listing
    assert 'class="badge gone">gone<' in listing
    assert ">yes<" not in listing and "1 of 3 repositories failed: " in listing
    assert "not found on GitHub" in listing
    # A long reason is cut to one short line; the whole of it is the cell's title.
    assert len(reason) > 80
    short = reason[:79].rstrip() + "…"
    assert f'title="{escape(reason)}">{escape(short)}</td>' in listing
    assert rows["unsynced-user"]["error"] is None
    assert rows["unsynced-user"]["last_sync"] is None
    assert doc["users"][-1]["login"] == "unsynced-user"  # newest sync first, never last
    # A user whose lock exists is syncing.
    archive.r.set("lock:github.com/bob", "1.0.elsewhere", ex=30)
    try:
        assert rows_by_login(archive.served.get("/api/users").json())["bob"]["status"] == \
            "syncing"
        assert "badge syncing" in archive.served.get("/users").text
    finally:
        archive.r.delete("lock:github.com/bob")
    page = archive.served.get("/users").text
    for login in rows:
        assert f'href="/users/{login}"' in page


def test_summary_falls_back_to_the_store(archive: Archive) -> None:
    saved = archive.r.hget("bulkbackup:syncd", "bob")
    archive.r.hdel("bulkbackup:syncd", "bob")
    try:
        bob = rows_by_login(archive.served.get("/api/users").json())["bob"]
        assert bob["syncd_repos"] == 2 and bob["reported_repos"] == 2 and bob["error"] is None
    finally:
        archive.r.hset("bulkbackup:syncd", "bob", saved or "")


def test_search(archive: Archive) -> None:
    assert [u["login"] for u in archive.served.get("/api/users?q=al").json()["users"]] == [
        "alice"]
    # Tracked but not in the store yet: found by its exact login.
    found = archive.served.get("/api/users?q=unsynced-user").json()["users"]
    assert [(u["login"], u["status"]) for u in found] == [("unsynced-user", "unsynced")]
    assert archive.served.get("/api/users?q=zzz").json()["users"] == []
    bad = archive.served.get("/api/users?q=../x")
    assert bad.status_code == 400 and "error" in bad.json()
    page = archive.served.get("/users?q=b").text
    assert 'href="/users/bob"' in page and 'href="/users/alice"' not in page


def test_pagination_by_cursor(archive: Archive) -> None:
    r = archive.r
    fake = {f"github.com/p-{i:03d}": float("-inf") for i in range(40)}
    fake.update({f"github.com/t-{i:03d}": 2e9 for i in range(30)})  # ties, at the top
    fake.update({f"github.com/s-{i:03d}": 1000.0 + i for i in range(30)})
    fake.update({f"github.com/c-{i:03d}": float("inf") for i in range(9)})  # claimed now
    r.zadd("tracked", fake)
    try:
        expected = [m.removeprefix("github.com/") for m in r.zrange("tracked", 0, -1, desc=True)]
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            doc = archive.served.get("/api/users", params={"cursor": cursor, "limit": 7}).json()
            seen += [u["login"] for u in doc["users"]]
            pages += 1
            if not doc["next"]:
                break
            cursor = doc["next"]
        assert seen == expected and pages == math.ceil(len(expected) / 7) + (
            len(expected) % 7 == 0)
        # The cursor's member moves (given back): the next page still starts after its place.
        first = archive.served.get("/api/users", params={"limit": 7}).json()
        assert [u["login"] for u in first["users"]] == expected[:7]
        r.zadd("tracked", {f"github.com/{expected[6]}": 1.0})  # now far down the list
        second = archive.served.get("/api/users", params={"cursor": first["next"],
                                                          "limit": 7}).json()
        assert [u["login"] for u in second["users"]] == expected[7:14]
        assert archive.served.get("/api/users?cursor=nonsense").status_code == 400
        html = archive.served.get("/users").text
        assert 'rel="next"' in html
    finally:
        r.zrem("tracked", *fake)


def test_user_page_and_json(archive: Archive) -> None:
    doc = archive.served.get("/api/users/alice").json()
    shown = json.loads(run_cli("show", "alice", "--json", env=archive.env).stdout)
    extras = {"status": "error", "badge": "partial", "unavailable": []}
    assert doc == {**shown, **extras}  # show --json's object, with the status
    # `error` is the stored Error or null, the same in show --json and both APIs.
    listed = rows_by_login(archive.served.get("/api/users").json())
    assert isinstance(shown["error"], str) and listed["alice"]["error"] == shown["error"]
    bob = json.loads(run_cli("show", "bob", "--json", env=archive.env).stdout)
    assert bob["error"] is None and listed["bob"]["error"] is None
    assert {r["name"] for r in doc["repositories"]} == {"hello", "empty-repo", "xss"}
    page = archive.served.get("/users/alice").text
    assert 'href="/users/alice/hello.bundle"' in page and 'href="/users/alice/hello.zip"' in page
    restore = (f"curl -fLo hello.bundle {archive.served.url}/users/alice/hello.bundle && "
               "git clone --mirror -- hello.bundle hello.git")
    assert f'<code class="cmd" data-cmd>{restore}</code>' in html.unescape(page)
    # Behind a TLS proxy on this machine, the restore command names the public scheme.
    proxied = archive.served.get("/users/alice", headers={"X-Forwarded-Proto": "https"}).text
    assert "curl -fLo hello.bundle https://127.0.0.1:" in proxied
    # From any other address the header is not believed (uvicorn's FORWARDED_ALLOW_IPS).
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=elsewhere, timeout=30) as other:
        spoofed = other.get(archive.served.url + "/users/alice",
                            headers={"X-Forwarded-Proto": "https"}).text
    assert restore in html.unescape(spoofed)
    # A hostile description (and the error that quotes the repository) render as text.
    assert XSS not in page and "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in page
    stored = archive.served.get("/users/alice.json")
    assert stored.status_code == 200 and stored.headers["content-type"] == "application/json"
    assert stored.content == (archive.store / "alice" / "%object").read_bytes()
    assert archive.served.get("/api/users/unsynced-user").json()["repositories"] == []
    assert "unsynced" in archive.served.get("/users/unsynced-user").text
    for path in ("/users/nobody", "/api/users/nobody", "/users/nobody.json"):
        assert archive.served.get(path).status_code == 404, path
    # An unknown download: the HTML page for a browser, JSON for anything else.
    for path in ("/users/alice/nope.bundle", "/users/alice/nope.zip", "/users/nobody.json"):
        browser = archive.served.get(path, headers={"Accept": "text/html,*/*;q=0.8"})
        assert browser.status_code == 404 and browser.headers["content-type"].startswith(
            "text/html") and "<h1>not found</h1>" in browser.text, path
        client = archive.served.get(path, headers={"Accept": "*/*"})
        assert client.status_code == 404 and client.json() == {"error": "not found"}, path


def test_download_full_head_range_conditional(archive: Archive) -> None:
    data = (archive.store / "alice" / "hello.bundle").read_bytes()
    url = "/users/alice/hello.bundle"
    full = archive.served.get(url)
    assert full.status_code == 200 and full.content == data
    h = full.headers
    assert h["content-length"] == str(len(data))
    assert h["content-type"] == "application/x-git-bundle"
    assert h["content-disposition"] == 'attachment; filename="hello.bundle"'
    assert h["accept-ranges"] == "bytes" and h["etag"] and h["last-modified"]
    head = archive.served.raw("HEAD", url)
    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str(len(data))
    assert head[1]["etag"] == h["etag"]
    part = archive.served.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert archive.served.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert archive.served.get(url, headers={"Range": "bytes=7-"}).content == data[7:]
    bad = archive.served.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    assert archive.served.get(url, headers={"If-None-Match": h["etag"]}).status_code == 304
    stale = archive.served.get(url, headers={"Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == data
    zipped = archive.served.get("/users/alice/hello.zip")
    assert zipped.status_code == 200 and zipped.content[:2] == b"PK"
    assert zipped.headers["content-type"] == "application/zip"
    # A zero-byte bundle is "no archive".
    assert archive.served.get("/users/alice/empty-repo.bundle").status_code == 404


def _evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache, and check that they are gone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        # (On a tmpfs the pages stay: the test's folder must be on a disk.)
        with pytest.raises(BlockingIOError):
            os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
    finally:
        os.close(fd)


def test_a_local_download_read_from_disk_or_the_page_cache(redis_url: str, tmp_path: Path
                                                           ) -> None:
    """A local store's file is read in place: page-cached pieces on the event loop, the others
    in the threadpool. Both give the same bytes, whole and ranged, across piece boundaries."""
    store = tmp_path / "store"
    (store / "alice").mkdir(parents=True)
    path = store / "alice" / "pieces.bundle"
    data = os.urandom(5 * 65536 + 123)
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # written back: its pages can be dropped
    served = start_serve(base_env(tmp_path, redis_url, str(store)), tmp_path / "serve.log")
    try:
        url = "/users/alice/pieces.bundle"
        for cached in (False, True):
            if not cached:
                _evict(path)
            assert served.get(url).content == data
            if not cached:
                _evict(path)
            part = served.get(url, headers={"Range": "bytes=65530-200000"})
            assert part.status_code == 206 and part.content == data[65530:200001]
            assert served.get(url, headers={"Range": "bytes=-70000"}).content == data[-70000:]
    finally:
        stop_serve(served)


@pytest.mark.parametrize("path", [
    "/users/..%2F..%2Fetc/passwd", "/users/a/../../x.bundle", "/users/..%2F..%2Fetc%2Fpasswd",
    "/users/alice/..%2F..%2Fbob%2Fone.bundle", "/users/alice/hel%00lo.bundle",
    "/users/al%00ice", "/api/users/al%00ice", "/users/" + "a" * 40, "/api/users/" + "a" * 40,
    "/users/alice/" + "r" * 101 + ".bundle", "/users/alice/hello.exe", "/users/alice/.bundle",
    "/users/alice/...bundle", "/users/%2e%2e/hello.bundle", "/users/alice/hello.bundle%00",
    "/users/alice.json%00", "/users/..%2Fbob.json",
    "/users/alice/..%2F..%2Fetc/states", "/users/alice/hel%00lo/states",
    "/api/users/alice/" + "r" * 101 + "/states", "/users/alice/hello/states?cursor=x-1",
    "/users/alice/hello/states?cursor=20260101T000000000000Z-" + "9" * 30,
    "/api/users/alice/nope/states", "/users/alice/empty-repo/states?cursor=%00",
])
def test_bad_names_are_404(archive: Archive, path: str) -> None:
    status, _, body = archive.served.raw("GET", path)
    assert status == 404, (path, status, body[:200])
    assert b"root:" not in body and b"Traceback" not in body


def test_security_headers(archive: Archive) -> None:
    for path in ("/", "/users", "/users/alice", "/api/stats", "/users/nobody",
                 "/users/alice/hello/states",
                 "/users/alice/hello.bundle", "/static/app.js", "/metrics"):
        h = archive.served.get(path).headers
        csp = h["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert h["x-content-type-options"] == "nosniff", path
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer", path
    assert "attachment" in archive.served.get(
        "/users/alice/hello.bundle").headers["content-disposition"]
    page = archive.served.get("/").text
    assert "<script>" not in page and '<script src="/static/app.js" defer></script>' in page
    assert "style=" not in page  # the CSP forbids inline styles too
    assert archive.served.get("/static/app.js").status_code == 200


def test_post_users(archive: Archive) -> None:
    def post(body: object, token: str | None = SERVE_TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(archive.served.url + "/api/users", json=body, headers=headers,
                          timeout=30)

    assert post({"logins": ["new-one"]}, token=None).status_code == 401
    assert post({"logins": ["new-one"]}, token="wrong").status_code == 401
    assert archive.r.zscore("tracked", "github.com/new-one") is None
    assert post({"logins": ["ok", "not valid"]}).status_code == 400
    assert post({"logins": ["ok", "a" * 40]}).status_code == 400
    assert post({"nope": 1}).status_code == 400
    assert archive.r.zscore("tracked", "github.com/ok") is None
    resp = post({"logins": ["new-one", "bob"]})
    assert resp.status_code == 200
    assert resp.json() == {"added": ["new-one"], "existing": ["bob"]}
    assert archive.r.zscore("tracked", "github.com/new-one") == float("-inf")
    assert archive.r.zscore("tracked", "github.com/bob") > 0  # kept its score
    # GET never changes state.
    assert archive.served.get("/api/users", params={"logins": "x"}).status_code == 200
    assert archive.r.zscore("tracked", "github.com/x") is None
    assert SERVE_TOKEN not in archive.served.log.read_text()
    archive.r.zrem("tracked", "github.com/new-one")
    # At most 1000 logins a request (docs/serve.md): 1001 adds none, 1000 add all.
    logins = [f"cap-{i}" for i in range(1001)]
    refused = post({"logins": logins})
    assert refused.status_code == 400 and "at most 1000 logins" in refused.text
    assert archive.r.zscore("tracked", "github.com/cap-0") is None
    resp = post({"logins": logins[:1000]})
    assert resp.status_code == 200 and len(resp.json()["added"]) == 1000
    assert archive.r.zmscore("tracked", [f"github.com/{x}" for x in logins]) == [
        float("-inf")] * 1000 + [None]
    archive.r.zrem("tracked", *(f"github.com/{x}" for x in logins))
    archive.r.zrem(keys.SEARCH, *logins)


def test_track_cli(archive: Archive) -> None:
    out = run_cli("track", "cli-added", "bob", env=archive.env)
    assert out.returncode == 0, out.stderr
    assert "cli-added: added" in out.stdout and "bob: already tracked" in out.stdout
    assert archive.r.zscore("tracked", "github.com/cli-added") == float("-inf")
    bad = run_cli("track", "fine", "../etc", env=archive.env)
    assert bad.returncode == 2 and "invalid login" in bad.stderr
    assert archive.r.zscore("tracked", "github.com/fine") is None
    archive.r.zrem("tracked", "github.com/cli-added")


def test_serve_refuses_a_bad_port(archive: Archive) -> None:
    out = run_cli("serve", "--port", "70000", env=archive.env, timeout=60)
    assert out.returncode == 2 and "--port must be 0-65535" in out.stderr


def test_workers_metrics_healthz(archive: Archive) -> None:
    # The run has ended: its workers left the list as they exited.
    assert archive.served.get("/api/workers").json() == {"workers": []}
    assert "No worker is running." in archive.served.get("/workers").text
    # A live worker's heartbeat: listed with when it was last seen.
    keeper = LockKeeper(archive.r, Scripts(archive.r), f"1.2.{WORKER_HOST}", 30)
    keeper.note_done(2, 1000)
    keeper.heartbeat()
    try:
        workers = archive.served.get("/api/workers").json()["workers"]
        assert [w["host"] for w in workers] == [WORKER_HOST]
        assert {"id", "host", "since", "seen", "users_per_min", "repos_per_min",
                "bytes_per_min", "users"} <= set(workers[0])
        assert workers[0]["users_per_min"] == 1 and workers[0]["seen"]
        page = archive.served.get("/workers").text
        assert "<th>last seen</th>" in page and f"<td>{workers[0]['seen']}</td>" in page
    finally:
        keeper.deregister()
    assert archive.served.get("/api/workers").json() == {"workers": []}
    text = archive.served.get("/metrics").text
    assert 'bulkbackup_users{status="tracked"} 4.0' in text
    assert "bulkbackup_workers_active 0.0" in text
    assert 'bulkbackup_freshness_users{age="never"} 1.0' in text
    assert 'bulkbackup_rate_per_minute{what="users",window="60m"}' in text
    assert "bulkbackup_last_stats_repositories 3.0" in text
    health = archive.served.get("/healthz")
    assert health.status_code == 200 and health.text.strip() == "ok"


# -- outages ----------------------------------------------------------------------------------


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            client.close()
            return proc
        time.sleep(0.05)
    raise AssertionError("redis-server did not start")


def wait_status(served: Served, path: str, status: int, timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    resp = served.get(path)
    while resp.status_code != status and time.monotonic() < deadline:
        time.sleep(0.2)
        resp = served.get(path)
    assert resp.status_code == status, (path, resp.status_code, resp.text[:300])
    return resp


def test_redis_and_store_down_then_back(tmp_path: Path) -> None:
    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    env = base_env(tmp_path, f"redis://127.0.0.1:{port}/0", str(store))
    served = start_serve(env, tmp_path / "serve.log")
    try:
        wait_status(served, "/api/stats", 200)
        redis_proc.terminate()
        redis_proc.wait(10)
        down = wait_status(served, "/api/stats", 503)
        assert down.json() == {"error": "redis unavailable"}
        page = served.get("/")
        assert page.status_code == 503 and 'id="banner"' in page.text
        assert "Redis" in page.text and "Traceback" not in page.text
        assert served.get("/healthz").status_code == 503
        assert served.get("/api/users").status_code == 503
        # Downloads need only the store (the login's spelling falls back to the one given).
        assert served.get("/users/alice/hello.bundle").status_code == 404
        assert served.proc.poll() is None
        redis_proc = start_redis(port, tmp_path)
        wait_status(served, "/api/stats", 200)
        wait_status(served, "/healthz", 200)
        # No admin token configured: writes are refused.
        resp = httpx.post(served.url + "/api/users", json={"logins": ["x"]},
                          headers={"Authorization": "Bearer x"}, timeout=30)
        assert resp.status_code == 403
        # The store goes away (and serve never recreates it), then comes back.
        store.rename(tmp_path / "moved")
        health = wait_status(served, "/healthz", 503)
        assert "store" in health.text
        page = served.get("/")
        assert page.status_code == 200 and 'id="banner"' in page.text
        assert served.get("/api/users/alice").status_code == 503
        assert not store.exists()
        (tmp_path / "moved").rename(store)
        wait_status(served, "/healthz", 200)
        assert "Traceback" not in served.log.read_text()
    finally:
        stop_serve(served)
        redis_proc.terminate()
        redis_proc.wait(10)


def test_s3_range_redirect_and_no_bucket_created(
    s3_endpoint: str, redis_url: str, tmp_path: Path, forge: Forge
) -> None:
    forge.add_user("carol", [RepoSpec("data", files={"big.txt": os.urandom(200_000)})])
    env = {**base_env(tmp_path, redis_url, "s3://github.com"), "GITHUB_API_URL": forge.url,
           "AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    # No bucket yet: serve answers 503 and does not create one.
    served = start_serve(env, tmp_path / "serve.log")
    try:
        assert wait_status(served, "/healthz", 503).text.strip() == "store unavailable"
        assert not s3.list_buckets()["Buckets"]
    finally:
        stop_serve(served)
    out = run_cli("sync", "carol", env=env)
    assert out.returncode == 0, out.stderr
    data = s3.get_object(Bucket="github.com", Key="carol/data.bundle")["Body"].read()
    served = start_serve(env, tmp_path / "serve.log")
    try:
        url = "/users/carol/data.bundle"
        assert served.get(url).content == data
        part = served.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert served.get(url, headers={"Range": "bytes=-10"}).content == data[-10:]
        assert served.raw("HEAD", url)[1]["content-length"] == str(len(data))
        assert served.get("/api/users?q=ca").json()["users"][0]["login"] == "carol"
    finally:
        stop_serve(served)
    cfg = tmp_path / "redirect.yaml"
    cfg.write_text("serve:\n  redirect_downloads: true\n")
    served = start_serve({**env, "BULKBACKUP_CONFIG": str(cfg)}, tmp_path / "serve.log")
    try:
        resp = served.get("/users/carol/data.bundle")
        assert resp.status_code == 302
        location = resp.headers["location"]
        assert location.startswith(s3_endpoint) and "Signature" in location
        with urllib.request.urlopen(location, timeout=30) as f:
            assert f.read() == data
        # The bucket goes away while serving: the health check notices.
        wait_status(served, "/healthz", 200)
        for obj in s3.list_objects_v2(Bucket="github.com").get("Contents", []):
            s3.delete_object(Bucket="github.com", Key=obj["Key"])
        s3.delete_bucket(Bucket="github.com")
        assert wait_status(served, "/healthz", 503).text.strip() == "store unavailable"
    finally:
        stop_serve(served)


def test_user_detail_is_describe_read_in_parallel_and_reused(tmp_path: Path) -> None:
    from bulkbackup.config import StoreSettings
    from bulkbackup.passes.show import describe
    from bulkbackup.store.local import LocalStore
    from bulkbackup.web.detail import StoredUsers

    store = LocalStore(StoreSettings(url=str(tmp_path / "store")))
    store.put_bytes("many", json.dumps([{"name": f"r{i}", "description": f"<b>{i}</b>"}
                                        for i in range(40)]).encode(), {"LastSync": "x"})
    for i in range(40):
        store.put_bytes(f"many/r{i}.bundle", b"" if i % 7 == 0 else b"data" * i,
                        {"LastSync": "t", "Error": "empty repository" if i % 7 == 0 else ""})
    stored = StoredUsers()
    try:
        user, descriptions = stored.get(store, "many")
        assert user == describe(store, "many")
        assert descriptions["r3"] == "<b>3</b>" and len(descriptions) == 40
        before = store.request_count
        assert stored.get(store, "many") == (user, descriptions)
        assert store.request_count == before  # reused, not read again
        assert stored.get(store, "nobody") == (None, {})
    finally:
        stored.close()


def test_a_local_download_reads_the_version_it_was_described_by(tmp_path: Path) -> None:
    import asyncio

    from bulkbackup.config import StoreSettings
    from bulkbackup.store.local import LocalStore
    from bulkbackup.web import downloads

    store = LocalStore(StoreSettings(url=str(tmp_path / "store")))
    first, second = os.urandom(70000), os.urandom(70000)  # the same size, other bytes
    store.put_bytes("alice/r.bundle", first, {})
    described = store.head("alice/r.bundle")
    assert described is not None and described.version

    async def read(version: str) -> bytes:
        pieces = downloads._in_place(store, "alice/r.bundle", 0, len(first), version)
        return b"".join([bytes(p) async for p in pieces])

    assert asyncio.run(read(described.version)) == first
    store.put_bytes("alice/r.bundle", second, {})  # rewritten between the HEAD and the read
    # Cut (the client sees a short body), never the second's bytes under the first's tags.
    assert asyncio.run(read(described.version)) == b""
    now = store.head("alice/r.bundle")
    assert now is not None and now.version != described.version
    assert asyncio.run(read(now.version)) == second


def test_a_stalled_download_does_not_stall_the_server(archive: Archive) -> None:
    from bulkbackup.config import StoreSettings
    from bulkbackup.store.local import LocalStore

    store = LocalStore(StoreSettings(url=str(archive.store)))
    big = os.urandom(1 << 20) * 64  # 64 MiB: far more than the socket buffers hold
    store.put_bytes("bob/big.bundle", big, {"LastSync": "2026-01-01T00:00:00Z"})
    try:
        with httpx.stream("GET", archive.served.url + "/users/bob/big.bundle",
                          timeout=30) as slow:
            first = next(slow.iter_raw(65536))
            assert first == big[:len(first)]
            # The client reads no more; the server still answers everyone else.
            for _ in range(5):
                assert archive.served.get("/api/stats").status_code == 200
                assert archive.served.get("/users/alice/hello.bundle").status_code == 200
    finally:
        remove_object(store, "bob/big.bundle")


def test_serve_freezes_its_startup_objects_and_collects_young_ones_less_often() -> None:
    """server.tune_gc (called by serve once its app is made), in a process of its own: the
    modules' objects frozen out of the collector's walks, its thresholds raised."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import gc, json; from bulkbackup.web import server; before = gc.get_threshold();"
         "server.tune_gc(); print(json.dumps([before, gc.get_threshold(), "
         "gc.get_freeze_count()]))"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    before, after, frozen = json.loads(out)
    assert before == [700, 10, 10] and tuple(after) == server.GC_THRESHOLDS
    assert frozen > 10_000  # every module imported so far (uvicorn, starlette, redis, ...)
