"""Search of logins that scales (issue 24): a sorted set of lowercased logins in Redis
(keys.SEARCH), kept by `ingest`, `track` and `rebuild`, answered with ZRANGEBYLEX and paged
with a cursor. Real `bulkbackup ingest`, `track`, `rebuild` and `serve` processes over a real
redis-server; the speed at 1 M users is measured by `python -m benchmarks.search`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from bulkbackup.config import StoreSettings
from bulkbackup.queue import keys
from bulkbackup.store.local import LocalStore
from tests.helpers import base_env, run_cli, start_serve, stop_serve

INGESTED = [f"user{i:04d}" for i in range(1200)] + [f"User-Mixed{i}" for i in range(60)]
TRACKED = ["UseR-by-hand", "other"]
EARLY = ["user-before-index", "uSer-Before-Index2"]  # in `tracked` before the index existed


def _all_pages(served: Any, q: str, limit: int) -> tuple[list[str], int]:
    """Every login the search of ``q`` answers, page after page; and the pages read."""
    logins: list[str] = []
    cursor, pages = "", 0
    while True:
        doc = served.get("/api/users", params={"q": q, "limit": limit, "cursor": cursor}).json()
        logins += [u["login"] for u in doc["users"]]
        pages += 1
        if doc["next"] is None:
            assert doc["more"] is False
            return logins, pages
        assert doc["more"] is True
        cursor = doc["next"]


def test_search_pages_every_match_once_ignoring_case(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.zadd(keys.TRACKED, {keys.member(x): "-inf" for x in EARLY})  # an older version's adds
    r.hset(keys.LOGINS, "user-before-index2", "uSer-Before-Index2")
    env = base_env(tmp_path, redis_url, str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    LocalStore(StoreSettings(url=str(tmp_path / "store"))).put_bytes(  # only in the store
        "Stored-User", b"[]", {"LastSync": "2026-01-01T00:00:00Z"})
    dump = tmp_path / "users.json"
    dump.write_text("".join(json.dumps({"login": x}) + "\n" for x in INGESTED))
    for args in (("ingest", str(dump)), ("track", *TRACKED)):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
    assert r.zcard(keys.SEARCH) == len(INGESTED) + len(TRACKED)  # each added login, lowercased
    served = start_serve(env, tmp_path / "serve.log")
    try:
        # Not rebuilt since the index exists: the store's one page, as before.
        doc = served.get("/api/users", params={"q": "user"}).json()
        assert doc["next"] is None
        proc = run_cli("rebuild", env=env)
        assert proc.returncode == 0, proc.stderr
        assert r.exists(keys.SEARCH_WHOLE)
        every = [x for x in INGESTED + TRACKED + EARLY if x.lower().startswith("user")]
        # One whole pass over every match; the others on narrower prefixes (each row listed
        # costs a store read): a page exactly full, a last page cut short, one-row pages.
        for q, limit in (("user", 50), ("USER1", 200), ("user-m", 7), ("User012", 1)):
            want = sorted((x for x in every if x.lower().startswith(q.lower())),
                          key=str.lower)
            got, pages = _all_pages(served, q, limit)
            assert got == want, q  # every match once, in order, spelled as tracked
            assert pages == max(1, -(-len(want) // limit)), (q, pages)
        assert _all_pages(served, "stored", 5)[0] == ["Stored-User"]  # rebuilt from the store
        found = served.get("/api/users", params={"q": "user-before"}).json()["users"]
        assert [u["login"] for u in found] == EARLY and found[0]["status"] == "unsynced"
        bad = served.get("/api/users", params={"q": "user", "cursor": "other"})
        assert bad.status_code == 400
        page = served.get("/users", params={"q": "user-m", "limit": 7}).text
        assert 'href="/users?q=user-m&amp;cursor=user-mixed14"' in page
    finally:
        stop_serve(served)
        r.close()
