"""`bulkbackup events` (issue 22, phase 1): which event changes what, hours read into marks in
a real redis-server, hours served by the GH Archive stand-in over real HTTP."""

from __future__ import annotations

import gzip
import io
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bulkbackup.events import hours
from bulkbackup.events.lines import BAD_SHOWN, HourCounts, marks_of
from bulkbackup.events.rules import Bad, Change, Mark, change_of, interesting_type
from bulkbackup.events.source import lines_of
from bulkbackup.names import is_login, is_repo_name
from bulkbackup.queue import events as queue_events
from bulkbackup.queue import keys
from bulkbackup.queue.connection import Scripts
from bulkbackup.testing import gharchive as gh
from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import ROOT, run_cli

H0 = datetime(2020, 1, 1, 0, tzinfo=UTC)
H1, H2, H3 = (H0 + timedelta(hours=n) for n in (1, 2, 3))


# -- the rules (pure) --------------------------------------------------------------------------

@pytest.mark.parametrize(("event", "expected"), [
    (gh.push("alice/r"), Mark("alice", "r", Change.REFS_MOVED)),
    (gh.create("alice/r", "branch", "dev"), Mark("alice", "r", Change.REFS_MOVED)),
    (gh.create("alice/r", "tag", "v1"), Mark("alice", "r", Change.REFS_MOVED)),
    (gh.create("alice/r", "repository"), Mark("alice", "r", Change.NEEDS_LISTING)),
    (gh.event("DeleteEvent", "alice/r", payload={"ref": "dev", "ref_type": "branch"}),
     Mark("alice", "r", Change.REFS_MOVED)),
    (gh.event("PublicEvent", "alice/r"), Mark("alice", "r", Change.NEEDS_LISTING)),
    (gh.event("ReleaseEvent", "alice/r"), Mark("alice", "r", Change.NEEDS_LISTING)),
    (gh.event("GollumEvent", "alice/r"), Mark("alice", "r", Change.NEEDS_LISTING)),
    (gh.fork("alice/r", "bob/r-fork"), Mark("bob", "r-fork", Change.NEEDS_LISTING)),
    (gh.event("WatchEvent", "alice/r"), None),
    (gh.event("IssuesEvent", "alice/r"), None),
    (gh.event("PushEvent", "alice/r/x"), Bad.NO_REPO),
    (gh.event("PushEvent", "al ice/r"), Bad.BAD_NAME),
    (gh.event("PushEvent", "alice/.."), Bad.BAD_NAME),
    (gh.event("ForkEvent", "alice/r"), Bad.NO_FORKEE),
    ({"type": 7}, Bad.NOT_AN_EVENT),
    ([1, 2], Bad.NOT_AN_EVENT),
])
def test_which_event_changes_what(event: object, expected: object) -> None:
    assert change_of(event) == expected


TYPES = ["PushEvent", "CreateEvent", "DeleteEvent", "PublicEvent", "ReleaseEvent",
         "GollumEvent", "ForkEvent", "WatchEvent", "IssuesEvent", "PullRequestEvent",
         "IssueCommentEvent", "MemberEvent", "Push", ""]
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["type", "ref_type", "name", "x"]),
                                       inner, max_size=3), max_leaves=8)


@hsettings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(TYPES), name=st.text(max_size=20) | st.sampled_from(
    ["a/b", "A-b/c.d", "x/", "/y", "-/-", "a/b/c"]), payload=_json,
       ref_type=st.sampled_from(["branch", "tag", "repository", None]))
def test_skipping_by_the_raw_type_never_loses_a_mark(kind: str, name: str, payload: object,
                                                     ref_type: str | None) -> None:
    event = gh.event(kind, "o/r", payload={"ref_type": ref_type, "nested": payload,
                                           "forkee": {"full_name": name}})
    event["repo"]["name"] = name
    line = orjson.dumps(event)
    found = change_of(orjson.loads(line))
    if interesting_type(line) is False:  # skipped without parsing: it must change nothing
        assert found is None
    if isinstance(found, Mark):  # a mark's names are valid keys
        assert is_login(found.owner) and is_repo_name(found.repo)
        assert f"{found.owner}/{found.repo}" == name


def test_a_nested_type_before_none_at_top_is_parsed_not_trusted() -> None:
    # Not GH Archive's order (its `type` comes second), but never skipped wrongly for it.
    line = b'{"payload":{"type":"WatchEvent"},"repo":{"name":"a/b"},"type":"PushEvent"}'
    assert interesting_type(line) is False  # the first "type" is the nested one...
    spaced = b'{"id": "1", "type": "PushEvent", "repo": {"name": "a/b"}}'
    assert interesting_type(spaced) is None  # ...a line shaped otherwise is parsed
    assert change_of(orjson.loads(spaced)) == Mark("a", "b", Change.REFS_MOVED)


@hsettings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2011, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)))
def test_hour_names_round_trip(when: datetime) -> None:
    hour = hours.floor(when)
    name = hours.name(hour)
    assert hours.parse_name(name) == hour
    assert hours.parse(name, "--from") == hour
    assert hours.parse(when.strftime("%Y-%m-%dT%H:%M:%SZ"), "--from") == hour
    assert not name.split("-")[3].startswith("0") or hour.hour == 0
    assert hours.of_file(f"/x/{name}.json.gz") == hour


def test_bad_lines_are_counted_in_bounded_memory() -> None:
    lines = [*gh.lines_of([gh.push("a/b")]), *gh.BAD_LINES, *gh.BAD_LINES,
             b"".join(gh.huge_line(3000)), b"".join(gh.huge_line(3000, "WatchEvent")),
             *gh.lines_of([gh.push("c/d")])]
    counts = HourCounts()
    marks = list(marks_of(io.BytesIO(b"".join(lines)), counts, max_bytes=1000))
    assert marks == [Mark("a", "b", Change.REFS_MOVED), Mark("c", "d", Change.REFS_MOVED)]
    assert counts.lines == len(lines)
    assert counts.bad[Bad.TOO_LONG] == 1  # the huge WatchEvent is just ignored
    assert counts.bad_lines == 2 * len(gh.BAD_LINES) + 1
    assert len(counts.first_bad) == BAD_SHOWN


def test_gzip_members_in_a_row_are_one_stream_and_a_cut_one_fails() -> None:
    a, b = b"".join(gh.lines_of([gh.push("a/b")])), b"line two\n" * 50_000
    both = gzip.compress(a) + gzip.compress(b)
    assert lines_of(io.BytesIO(both), True, "x").read() == a + b
    with pytest.raises(EOFError):
        lines_of(io.BytesIO(both[:-9]), True, "x").read()
    corrupt = bytearray(both)
    corrupt[-6] ^= 0xFF  # the second member's CRC
    with pytest.raises(zlib.error):
        lines_of(io.BytesIO(bytes(corrupt)), True, "x").read()
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MB from 64 KB: inflated piece by piece
    stream = lines_of(io.BytesIO(bomb), True, "x")
    tracemalloc.start()
    try:
        assert len(stream.read(1000)) == 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# -- the marks in Redis -----------------------------------------------------------------------

def test_marks_only_tracked_owners_ignoring_case(r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member("Alice"): 5.0, keys.member("bob"): 7.0})
    r.hset(keys.LOGINS, "alice", "Alice")
    marks = queue_events.DueMarks(r, Scripts(r), track_new=False)
    marks.score_s = 100
    for owner, repo in [("alice", "r1"), ("ALICE", "r2"), ("bob", "x"), ("carol", "y")]:
        marks.add(owner, repo, needs_listing=False)
    marks.add("Bob", "new", needs_listing=True)
    marks.flush()
    assert r.zrange(keys.EVENTS_DUE, 0, -1, withscores=True) == [
        (keys.member("Alice"), 100.0), (keys.member("bob"), 100.0)]
    assert r.smembers(keys.events_refs("Alice")) == {"r1", "r2"}
    assert r.smembers(keys.EVENTS_LISTING) == {keys.member("bob")}
    assert not r.exists(keys.events_refs("bob"))  # a listing covers every repository
    assert marks.figures.untracked == 1
    # A score and LastSync stay what they were until the owner is synced.
    assert r.zscore(keys.TRACKED, keys.member("Alice")) == 5.0
    assert not r.exists(keys.member("carol"))


def test_too_many_repositories_of_one_owner_need_a_listing(r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member("big"): 1.0})
    marks = queue_events.DueMarks(r, Scripts(r), track_new=False, batch_events=7)
    for n in range(keys.EVENTS_REFS_MAX + 1):
        marks.add("big", f"r{n}", needs_listing=False)
    marks.flush()
    assert r.sismember(keys.EVENTS_LISTING, keys.member("big"))
    assert not r.exists(keys.events_refs("big"))


def test_track_new_tracks_as_ingest(r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member("Alice"): 5.0})
    r.hset(keys.LOGINS, "alice", "Alice")
    marks = queue_events.DueMarks(r, Scripts(r), track_new=True)
    for owner in ("alice", "Newbie", "newbie"):
        marks.add(owner, "r", needs_listing=False)
    marks.flush()
    assert r.zrange(keys.TRACKED, 0, -1, withscores=True) == [
        (keys.member("Newbie"), float("-inf")), (keys.member("Alice"), 5.0)]
    assert marks.figures.tracked_new == 1 and marks.figures.untracked == 0
    assert set(r.zrange(keys.EVENTS_DUE, 0, -1)) == {keys.member("Alice"),
                                                       keys.member("Newbie")}
    assert r.zrange(keys.SEARCH, 0, -1) == ["newbie"]  # serve's search finds it


def test_marks_travel_in_batches_not_a_round_trip_per_event(r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member(f"u{n}"): 1.0 for n in range(3000)})
    r.config_resetstat()
    marks = queue_events.DueMarks(r, Scripts(r), track_new=False)
    for n in range(6000):
        marks.add(f"u{n % 3000}", f"r{n}", needs_listing=False)
    marks.flush()
    calls = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    assert 0 < calls <= 2 * 3000 // queue_events.OWNERS_PER_CALL + 2
    assert r.zcard(keys.EVENTS_DUE) == 3000


_SPELLINGS = {"alice": ["alice", "Alice", "ALICE"], "bob": ["Bob", "bob"], "carol": ["carol"]}


@hsettings(max_examples=150, deadline=None)
@given(tracked=st.sets(st.sampled_from(sorted(_SPELLINGS))),
       marks=st.lists(st.tuples(st.sampled_from(sorted(_SPELLINGS)), st.integers(0, 3),
                                st.integers(0, 140), st.integers(0, 30),
                                st.sampled_from([False, False, False, True])), max_size=30),
       batch=st.integers(1, 60))
def test_marks_are_what_the_events_say_in_any_order_and_batching(
        redis_server: str, tracked: set[str], marks: list[tuple[str, int, int, int, bool]],
        batch: int) -> None:
    """A model: a tracked account (any spelling in the events) is due once it has a mark; it
    needs a listing when one of its marks does, or more than EVENTS_REFS_MAX repositories
    moved; else its refs are exactly the repositories named. Untracked: nothing."""
    r = redis.Redis.from_url(redis_server, decode_responses=True)
    r.flushall()
    stored = {a: _SPELLINGS[a][-1] for a in tracked}  # the tracked spelling
    r.zadd(keys.TRACKED, {keys.member("someone-else"): 1.0,
                          **{keys.member(login): 1.0 for login in stored.values()}})
    for login in stored.values():
        if login != login.lower():
            r.hset(keys.LOGINS, login.lower(), login)
    due = queue_events.DueMarks(r, Scripts(r), track_new=False, batch_events=batch)
    for account, spelling, first, count, needs_listing in marks:
        login = _SPELLINGS[account][spelling % len(_SPELLINGS[account])]
        for n in range(first, first + count):
            due.add(login, f"r{n}", needs_listing)
    due.flush()
    named: dict[str, set[str]] = {a: set() for a, *_ in marks}
    for account, _, first, count, _ in marks:
        named[account] |= {f"r{n}" for n in range(first, first + count)}
    listing = {a for a, _, _, count, needs in marks if count and needs} | {
        a for a, repos in named.items() if len(repos) > keys.EVENTS_REFS_MAX}
    marked = {a for a, _, _, count, _ in marks if count} & tracked
    assert set(r.zrange(keys.EVENTS_DUE, 0, -1)) == {keys.member(stored[a]) for a in marked}
    assert r.smembers(keys.EVENTS_LISTING) == {keys.member(stored[a])
                                               for a in marked & listing}
    refs = {k.removeprefix(keys.EVENTS_REFS_PREFIX): r.smembers(k)
            for k in r.scan_iter(keys.EVENTS_REFS_PREFIX + "*")}
    assert refs == {a: named[a] for a in marked - listing}
    r.close()


def test_marks_survive_scripts_flushed_between_batches(r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member("alice"): 1.0})
    marks = queue_events.DueMarks(r, Scripts(r), track_new=True, batch_events=1)
    marks.add("alice", "r1", needs_listing=False)
    r.script_flush()  # as a Redis restarted without its scripts
    marks.add("alice", "r2", needs_listing=False)
    marks.add("bob", "b", needs_listing=False)
    assert r.smembers(keys.events_refs("alice")) == {"r1", "r2"}
    assert r.smembers(keys.events_refs("bob")) == {"b"}


# -- the command, over HTTP --------------------------------------------------------------------

@pytest.fixture
def archive(tmp_path: Path) -> Iterator[gh.GHArchive]:
    with gh.GHArchive(tmp_path / "gharchive") as a:
        yield a


@pytest.fixture
def ev_env(clean_env: None, redis_url: str, archive: gh.GHArchive, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI reads hours from the stand-in, from this test's Redis; returns the config."""
    monkeypatch.setenv("GHARCHIVE_URL", archive.url)
    cfg = tmp_path / "events.yaml"
    cfg.write_text("events:\n  gap_hours: 6\n  poll_s: 0.1\n")
    monkeypatch.setenv("BULKBACKUP_CONFIG", str(cfg))
    return cfg


def _events(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("events", *args)


def _snapshot(r: redis.Redis) -> dict[str, object]:
    return {"due": r.zrange(keys.EVENTS_DUE, 0, -1, withscores=True),
            "listing": r.smembers(keys.EVENTS_LISTING),
            "refs": {k: r.smembers(k) for k in r.scan_iter(keys.EVENTS_REFS_PREFIX + "*")},
            "tracked": r.zrange(keys.TRACKED, 0, -1, withscores=True)}


def test_an_hour_read_twice_changes_nothing_more(ev_env: Path, archive: gh.GHArchive,
                                                 r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member("alice"): 3.0, keys.member("bob"): 4.0})
    archive.publish(H0, [gh.push("alice/r", at=H0), gh.create("bob/new", "repository", at=H0),
                         gh.event("WatchEvent", "alice/r", at=H0)])
    first = _events("--from", hours.name(H0), "--to", hours.name(H0))
    assert first.returncode == 0, first.stderr
    assert "2020-01-01-0: read: 3 lines, 2 changes, 2 owners marked (2 newly due" in first.stderr
    assert r.smembers(keys.events_refs("alice")) == {"r"}
    r.delete(keys.EVENTS_DUE, keys.EVENTS_LISTING, keys.events_refs("alice"))  # as if synced
    before = _snapshot(r), r.hgetall(keys.EVENTS_STATUS)
    for again in (["--from", "2020-01-01T00:30:00Z", "--to", "2020-01-01-0"],
                  [str(archive.path(H0))]):
        second = _events(*again)
        assert second.returncode == 0, second.stderr
        assert "2020-01-01-0: already read" in second.stderr
        assert (_snapshot(r), r.hgetall(keys.EVENTS_STATUS)) == before


def test_track_new_or_not(ev_env: Path, archive: gh.GHArchive, r: redis.Redis) -> None:
    archive.publish(H0, [gh.push("stranger/r", at=H0)])
    archive.publish(H1, [gh.push("stranger/r", at=H1)])
    plain = _events("--from", hours.name(H0), "--to", hours.name(H0))
    assert plain.returncode == 0 and "1 not tracked" in plain.stderr
    assert _snapshot(r) == {"due": [], "listing": set(), "refs": {}, "tracked": []}
    tracking = _events("--from", hours.name(H1), "--to", hours.name(H1), "--track-new")
    assert tracking.returncode == 0 and "1 newly tracked" in tracking.stderr
    assert r.zscore(keys.TRACKED, keys.member("stranger")) == float("-inf")
    assert r.smembers(keys.events_refs("stranger")) == {"r"}


def test_a_missing_hour_is_skipped_after_gap_hours(ev_env: Path, archive: gh.GHArchive,
                                                   r: redis.Redis) -> None:
    archive.publish(H0, [gh.push("a/b", at=H0)])
    archive.publish(H2, [gh.push("a/b", at=H2)])  # H1 never published (2020: long overdue)
    proc = _events("--from", hours.name(H0), "--to", hours.name(H2))
    assert proc.returncode == 0, proc.stderr
    assert ("2020-01-01-1: skipped: not published for more than events.gap_hours (6h)"
            in proc.stderr)
    assert "2 hours read, 0 already read, 1 skipped, 0 failed" in proc.stderr
    assert r.zrange(keys.EVENTS_HOURS, 0, -1) == ["2020-01-01-0", "2020-01-01-2"]
    status = queue_events.status(r)
    assert status["last_hour"] == "2020-01-01-2" and status["last_gap"] == "2020-01-01-1"
    shown = queue_events.figures(r, (H3 + timedelta(minutes=30)).timestamp())
    assert shown == {"last_hour": "2020-01-01-2", "lag_s": 1800, "hours": 2, "gaps": 1,
                     "events": 2, "bad_lines": 0, "marked_due": 0, "needs_listing": 0}
    archive.publish(H3, [gh.push("a/b", at=H3)])  # without --from: resumes after the last
    resumed = _events("--to", hours.name(H3))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.splitlines()[0].startswith("events: 2020-01-01-3: read")


def test_a_truncated_hour_fails_and_is_not_marked_done(ev_env: Path, archive: gh.GHArchive,
                                                       r: redis.Redis) -> None:
    archive.publish(H0, [gh.push("a/b", at=H0)])
    archive.publish(H1, [gh.push("a/c", at=H1)] * 50, truncate_bytes=20)
    archive.publish(H2, [gh.push("a/d", at=H2)])
    proc = _events("--from", hours.name(H0), "--to", hours.name(H2))
    assert proc.returncode == 1
    assert "2020-01-01-1: failed: truncated or corrupt" in proc.stderr
    assert r.zrange(keys.EVENTS_HOURS, 0, -1) == ["2020-01-01-0"]  # H2 waits for H1
    archive.publish(H1, [gh.push("a/c", at=H1)])  # published again, whole
    again = _events("--from", hours.name(H1), "--to", hours.name(H2))
    assert again.returncode == 0, again.stderr
    assert r.zcard(keys.EVENTS_HOURS) == 3


def test_an_answer_that_is_not_gzip_fails_its_hour(ev_env: Path, archive: gh.GHArchive,
                                                   r: redis.Redis) -> None:
    archive.publish_raw(H0, b"<html><body>502 Bad Gateway</body></html>\n")
    proc = _events("--from", hours.name(H0), "--to", hours.name(H0))
    assert proc.returncode == 1 and "2020-01-01-0: failed: not gzip" in proc.stderr
    assert r.zcard(keys.EVENTS_HOURS) == 0


def test_bad_lines_are_counted_never_fatal(ev_env: Path, archive: gh.GHArchive,
                                           r: redis.Redis) -> None:
    r.zadd(keys.TRACKED, {keys.member("alice"): 1.0})
    archive.publish_lines(H0, [*gh.BAD_LINES, *gh.huge_line(3 << 20),
                               *gh.lines_of([gh.push("alice/r", at=H0)])])
    proc = _events("--from", hours.name(H0), "--to", hours.name(H0))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(gh.BAD_LINES) + 1} bad lines (" in proc.stderr
    assert "line too long 1" in proc.stderr
    assert r.smembers(keys.events_refs("alice")) == {"r"}
    assert queue_events.status(r)["bad_lines"] == str(len(gh.BAD_LINES) + 1)


def test_follow_picks_up_a_new_hour_then_is_interrupted(ev_env: Path, archive: gh.GHArchive,
                                                        r: redis.Redis) -> None:
    ev_env.write_text("events:\n  gap_hours: 800000\n  poll_s: 0.1\n")  # nothing is a gap
    r.zadd(keys.TRACKED, {keys.member("alice"): 1.0})
    archive.publish(H0, [gh.push("alice/r0", at=H0)])
    proc = subprocess.Popen([sys.executable, "-m", "bulkbackup", "events", "--follow",
                             "--from", hours.name(H0)], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        _wait_for(lambda: archive.requests[f"/{hours.file_name(H1)}"] >= 2, proc)
        assert r.zrange(keys.EVENTS_HOURS, 0, -1) == ["2020-01-01-0"]
        archive.publish(H1, [gh.push("alice/r1", at=H1)])
        _wait_for(lambda: r.zscore(keys.EVENTS_HOURS, "2020-01-01-1") is not None, proc)
        assert r.smembers(keys.events_refs("alice")) == {"r0", "r1"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert "2020-01-01-1: not published yet" in err and "waiting" in err
    assert err.count("2020-01-01-1: not published yet") == 1  # told once, not per try
    assert "2020-01-01-1: read" in err and err.rstrip().endswith("bulkbackup: interrupted")


def _wait_for(check: object, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """Poll ``check`` (bounded: a hung command fails the test, with its output)."""
    assert callable(check)
    ends = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None or time.monotonic() > ends:
            proc.kill()
            raise AssertionError(f"gave up waiting; stderr: {proc.communicate()[1]}")
        time.sleep(0.05)


# The command, then its peak resident memory (VmHWM: this process's own since its exec; not
# ru_maxrss, which counts the pytest process it was forked from).
_MEASURED = """import sys
from bulkbackup.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    print(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
sys.exit(rc)
"""


def _peak_rss_kb(args: list[str]) -> int:
    proc = subprocess.run([sys.executable, "-c", _MEASURED, "events", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])  # KiB


def test_memory_stays_flat_whatever_the_hours_size(ev_env: Path, archive: gh.GHArchive,
                                                   r: redis.Redis, tmp_path: Path) -> None:
    r.zadd(keys.TRACKED, {keys.member(f"user{n}"): 1.0 for n in range(0, 20_000, 7)})
    small = archive.publish(H0, [gh.push("user0/r", at=H0)])
    big_events = (gh.push(f"user{n % 20_000}/repo{n % 150}", at=H1) if n % 2 else
                  gh.event("IssueCommentEvent", f"user{n % 20_000}/r",
                           payload={"comment": {"body": "x" * 400}}, at=H1)
                  for n in range(200_000))
    big = tmp_path / "2020-01-01-1.json.gz"
    gh.write_hour(big, [*gh.huge_line(48 << 20), *gh.lines_of(big_events)])
    with gzip.open(big, "rb") as f:  # the hour's size, decompressed
        size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
    base_kb = _peak_rss_kb([str(small)])
    big_kb = _peak_rss_kb([str(big)])
    assert r.zcard(keys.EVENTS_HOURS) == 2
    assert size > 120 << 20
    # Held whole, the hour (or its 48 MB line) would add at least that much.
    assert (big_kb - base_kb) * 1024 < size // 10, (base_kb, big_kb, size)


def test_the_stand_ins_changes_are_their_events(ev_env: Path, archive: gh.GHArchive,
                                                tmp_path: Path, r: redis.Redis) -> None:
    with Forge(tmp_path / "forge") as forge:
        forge.add_users({"alice": [RepoSpec("r1"), RepoSpec("r2")], "Bob": [RepoSpec("b")]})
        r.zadd(keys.TRACKED, {keys.member("alice"): 1.0, keys.member("Bob"): 1.0})
        forge.event_log = archive
        forge.push("alice", "r1", {"new.txt": b"new\n"})
        forge.add_branch("alice", "r2", "dev", {"dev.txt": b"dev\n"})
        forge.add_tag("alice", "r2", "v9")
        forge.add_repo("Bob", RepoSpec("fresh"))
        forge.rename_repo("Bob", "b", "b2")  # GitHub's events miss renames: none recorded
    recorded = archive.recorded()
    kinds = [(e["type"], e["repo"]["name"], e["payload"].get("ref_type"))
             for es in recorded.values() for e in es]
    assert kinds == [("PushEvent", "alice/r1", None), ("CreateEvent", "alice/r2", "branch"),
                     ("CreateEvent", "alice/r2", "tag"), ("CreateEvent", "Bob/fresh",
                                                          "repository")]
    published = archive.publish_recorded()
    proc = _events("--from", hours.name(published[0]), "--to", hours.name(published[-1]))
    assert proc.returncode == 0, proc.stderr
    assert r.smembers(keys.events_refs("alice")) == {"r1", "r2"}
    assert r.smembers(keys.EVENTS_LISTING) == {keys.member("Bob")}


def test_a_server_that_never_answers_fails_the_hour_in_bounded_time(
        ev_env: Path, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    ev_env.write_text("events:\n  hour_timeout_s: 1\n")
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("GHARCHIVE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        proc = run_cli("events", "--from", hours.name(H0), "--to", hours.name(H0), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "2020-01-01-0: failed: not read whole within events.hour_timeout_s (1s)" in proc.stderr
    assert r.zcard(keys.EVENTS_HOURS) == 0
