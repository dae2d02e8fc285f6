"""Issue 22: `/api/stats`, the dashboard and `/metrics` show where `bulkbackup events` stands
(the last hour read, the lag), and the due figure follows the events rule once an hour is read.

A real `bulkbackup serve` over HTTP, a real redis-server, `bulkbackup events` reading an hour
from the GH Archive stand-in over HTTP, and `bulkbackup stats` for the same due figure.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bulkbackup.events import hours
from bulkbackup.queue import keys
from bulkbackup.testing import gharchive as gh
from tests.helpers import ROOT, Served, base_env, start_serve, stop_serve

H0 = datetime(2020, 1, 1, 0, tzinfo=UTC)
H0_END_S = int(H0.timestamp()) + 3600
DAY_S = 86_400


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[gh.GHArchive]:
    with gh.GHArchive(tmp_path / "gharchive") as a:
        yield a


@pytest.fixture
def env(redis_url: str, archive: gh.GHArchive, tmp_path: Path) -> dict[str, str]:
    store = tmp_path / "store"
    store.mkdir()
    return {**base_env(tmp_path, redis_url, str(store)), "GHARCHIVE_URL": archive.url}


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    s = start_serve(env, tmp_path / "serve.log")
    yield s
    stop_serve(s)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "bulkbackup", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _metrics(served: Served) -> dict[str, float]:
    resp = served.get("/metrics")
    assert resp.status_code == 200
    return {f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def _track(r: redis.Redis) -> float:
    """Users whose due-ness tells the two rules apart; returns Redis's now. The last run began
    an hour ago: before events, due is below its start: alice (never), carol, erin: 3."""
    sec, _ = r.time()
    now = float(sec)
    r.zadd(keys.TRACKED, {keys.member("alice"): float("-inf"),
                          keys.member("bob"): now - 60,  # synced during the last run
                          keys.member("carol"): now - 40 * DAY_S,  # past the full pass
                          keys.member("dave"): now - 60,  # synced, then pushed
                          keys.member("erin"): now - 2 * DAY_S})  # before the last run
    r.hset(keys.LAST_RUN, mapping={"started_at": now - 3600, "ended_at": now - 30,
                                   "users": 3})
    return now


def _stats_due(env: dict[str, str]) -> int:
    report = orjson.loads(_cli(env, "stats", "--json", "--no-write").stdout)
    return int(report["users"]["due"])


def test_before_any_hour_the_events_figures_are_absent(served: Served, env: dict[str, str],
                                                       r: redis.Redis) -> None:
    _track(r)
    doc = served.get("/api/stats").json()
    assert doc["due"] == 3  # the last run's start: no events read
    ev = doc["events"]
    assert ev["read"] is False
    assert ev["last_hour"] is None and ev["last_hour_start"] is None
    assert ev["lag_s"] is None and ev["read_at"] is None
    assert (ev["hours"], ev["events"], ev["marked_due"], ev["needs_listing"]) == (0, 0, 0, 0)
    page = served.get("/", headers={"Accept": "text/html"}).text
    assert "Events not read" in page and 'id="events-lag"' not in page
    m = _metrics(served)
    assert "bulkbackup_events_last_hour_timestamp_seconds" not in m
    assert "bulkbackup_events_lag_seconds" not in m
    assert m["bulkbackup_events_hours"] == 0
    assert m["bulkbackup_users[('status', 'due')]"] == 3
    assert _stats_due(env) == 3


def test_an_hour_read_shows_its_name_and_lag_and_the_due_rule_follows_events(
        served: Served, env: dict[str, str], archive: gh.GHArchive, r: redis.Redis) -> None:
    now = _track(r)
    archive.publish(H0, [gh.push("dave/r", at=H0), gh.create("bob/new", "repository", at=H0),
                         gh.event("WatchEvent", "erin/r", at=H0), b"not json"])
    _cli(env, "events", "--from", hours.name(H0), "--to", hours.name(H0))

    doc = served.get("/api/stats").json()
    ev = doc["events"]
    assert ev["read"] is True and ev["last_hour"] == "2020-01-01-0"
    assert ev["last_hour_start"] == "2020-01-01T00:00:00Z"
    # Now minus the hour's end, on Redis's clock (read before the request: it can only grow).
    assert now - H0_END_S <= ev["lag_s"] <= now - H0_END_S + 600
    assert (ev["hours"], ev["events"], ev["marks"], ev["bad_lines"]) == (1, 4, 2, 1)
    assert (ev["marked_due"], ev["needs_listing"]) == (2, 1)  # dave (refs), bob (listing)
    # alice (never), carol (40 days), dave and bob (marked): bob synced during the last run
    # is due now for his new repository; erin, listed within 30 days, is not.
    assert doc["due"] == 4
    assert _stats_due(env) == 4

    page = html.unescape(served.get("/", headers={"Accept": "text/html"}).text)
    assert "Events not read" not in page
    assert re.search(r'id="events-last-hour">2020-01-01-0<', page)
    lag = re.search(r'id="events-lag" data-seconds="(\d+)">(\d+) d (\d+) h<', page)
    assert lag is not None, page[:3000]
    lag_s, days, hours_ = (int(x) for x in lag.groups())
    assert (days, hours_) == (lag_s // DAY_S, lag_s % DAY_S // 3600)
    assert now - H0_END_S <= lag_s <= now - H0_END_S + 600

    m = _metrics(served)
    assert m["bulkbackup_events_last_hour_timestamp_seconds"] == H0.timestamp()
    assert now - H0_END_S <= m["bulkbackup_events_lag_seconds"] <= now - H0_END_S + 600
    assert m["bulkbackup_events_hours"] == 1 and m["bulkbackup_events_events"] == 4
    assert m["bulkbackup_events_bad_lines"] == 1
    assert m["bulkbackup_events_marked_users[('needs', 'any')]"] == 2
    assert m["bulkbackup_events_marked_users[('needs', 'listing')]"] == 1
    assert m["bulkbackup_users[('status', 'due')]"] == 4

    # A marked user synced drops its mark: due again only by the full-pass rule.
    r.zrem(keys.EVENTS_DUE, keys.member("dave"), keys.member("bob"))
    assert served.get("/api/stats").json()["due"] == 2  # alice, carol
    assert _stats_due(env) == 2


def test_odd_events_figures_in_redis_show_as_unknown(served: Served, r: redis.Redis) -> None:
    r.hset(keys.EVENTS_STATUS, mapping={"last_hour": "2020-01-01-0", "last_hour_start": "1e300",
                                        "hours": "x", "events": str(2**70)})
    resp = served.get("/api/stats")
    assert resp.status_code == 200
    ev = resp.json()["events"]
    assert ev["read"] is False and ev["lag_s"] is None
    assert (ev["hours"], ev["events"]) == (0, 0)
    assert served.get("/metrics").status_code == 200
    assert served.get("/", headers={"Accept": "text/html"}).status_code == 200
