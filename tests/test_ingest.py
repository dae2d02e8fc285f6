"""`bulkbackup ingest` and `reset` against a real redis-server."""

from __future__ import annotations

import gzip
import math
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bulkbackup import config
from bulkbackup.queue.ingest import ingest
from tests.helpers import ROOT, run_cli

GOOD = [
    b'{"login": "octocat", "id": 583231}',
    b'{"actor_login": "foo-"}',  # GH Archive, flat; a legacy login with a trailing hyphen
    b'{"actor": {"login": "-Jerry-", "id": 7}}',  # GH Archive, nested
    b'{"login": "A1-b2-C3", "id": 2}',
    b'{"login": "' + b"x" * 39 + b'"}',
]
BAD = [
    (b"", "blank line"),
    (b"   ", "blank line"),
    (b"{not json", "invalid JSON"),
    (b'{"id": 3}', "no login"),
    (b'["login", "octocat"]', "no login"),
    (b'{"login": null}', "no login"),
    (b'{"login": "a.b"}', "invalid login"),
    (b'{"login": "../etc"}', "invalid login"),
    (b'{"login": "a b"}', "invalid login"),
    (b'{"login": "tab\\there"}', "invalid login"),
    (b'{"login": "' + b"y" * 40 + b'"}', "invalid login"),
    (b'{"login": ""}', "invalid login"),
    (b'{"login": 42}', "invalid login"),
    (b'{"login": "\xc3\xa9mile"}', "invalid login"),
    (b'{"login": "a/b"}', "invalid login"),
]
MEMBERS = {
    "github.com/octocat", "github.com/foo-", "github.com/-Jerry-", "github.com/A1-b2-C3",
    "github.com/" + "x" * 39,
}


def dump_bytes() -> bytes:
    lines: list[bytes] = []
    for i, good in enumerate(GOOD):
        lines.append(good)
        lines.append(BAD[i][0])
    lines.extend(b for b, _ in BAD[len(GOOD):])
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    path.write_bytes(dump_bytes())
    return path


def test_plain_file_all_shapes_and_every_bad_line(
    clean_env: None, r: redis.Redis, dump: Path, tmp_path: Path
) -> None:
    rejects = tmp_path / "rejects.tsv"
    proc = run_cli("ingest", str(dump), "--rejects", str(rejects))
    assert proc.returncode == 0, proc.stderr
    assert set(r.zrange("tracked", 0, -1)) == MEMBERS
    assert all(s == -math.inf for _, s in r.zrange("tracked", 0, -1, withscores=True))
    summary = proc.stderr.strip().splitlines()[-1]
    total = len(GOOD) + len(BAD)
    assert f"{total} lines read" in summary
    assert f"{len(GOOD)} logins accepted" in summary
    assert f"{len(GOOD)} newly tracked" in summary
    assert "0 already tracked" in summary
    assert f"{len(BAD)} rejected" in summary
    assert "line 2: blank line" in summary  # the first rejects are named with line numbers
    lines = rejects.read_text().splitlines()
    assert len(lines) == len(BAD)
    got = sorted((line.split("\t")[1]) for line in lines)
    assert got == sorted(why for _, why in BAD)
    numbers = [int(line.split("\t")[0]) for line in lines]
    assert numbers[:3] == [2, 4, 6]


def test_gzip_detected_by_magic_bytes_not_name(
    clean_env: None, r: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "users.json"  # no .gz suffix on purpose
    path.write_bytes(gzip.compress(dump_bytes()))
    proc = run_cli("ingest", str(path))
    assert proc.returncode == 0, proc.stderr
    assert set(r.zrange("tracked", 0, -1)) == MEMBERS
    plain = tmp_path / "plain.gz"  # a .gz name on a plain file is read as plain
    plain.write_bytes(b'{"login": "plainuser"}\n')
    assert run_cli("ingest", str(plain)).returncode == 0
    assert r.zscore("tracked", "github.com/plainuser") == -math.inf


@pytest.mark.parametrize("compress", [False, True])
def test_stdin(clean_env: None, r: redis.Redis, compress: bool) -> None:
    data = dump_bytes()
    proc = run_cli("ingest", "-", stdin=gzip.compress(data) if compress else data)
    assert proc.returncode == 0, proc.stderr
    assert set(r.zrange("tracked", 0, -1)) == MEMBERS


def test_limit_counts_accepted_logins(clean_env: None, r: redis.Redis, dump: Path) -> None:
    proc = run_cli("ingest", str(dump), "--limit", "3", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert set(r.zrange("tracked", 0, -1)) == {
        "github.com/octocat", "github.com/foo-", "github.com/-Jerry-"}
    assert "3 logins accepted" in proc.stderr
    assert "5 lines read" in proc.stderr  # it stopped reading at the third accepted login


def test_limit_zero_reads_nothing(clean_env: None, r: redis.Redis, dump: Path) -> None:
    proc = run_cli("ingest", str(dump), "--limit", "0")
    assert proc.returncode == 0, proc.stderr
    assert r.zcard("tracked") == 0


def test_scores_of_tracked_users_are_kept(clean_env: None, r: redis.Redis, dump: Path) -> None:
    r.zadd("tracked", {"github.com/octocat": 1_700_000_000, "github.com/foo-": 0})
    result = ingest(config.load(), str(dump), progress=False)
    assert r.zscore("tracked", "github.com/octocat") == 1_700_000_000
    assert r.zscore("tracked", "github.com/foo-") == 0
    assert r.zscore("tracked", "github.com/-Jerry-") == -math.inf
    assert (result.new, result.existing) == (len(GOOD) - 2, 2)


def test_duplicates_in_the_dump_count_as_already_tracked(
    clean_env: None, r: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "dup.json"
    path.write_bytes(b'{"login": "a"}\n{"login": "b"}\n{"login": "a"}\n' * 2)
    result = ingest(config.load(), str(path), batch_size=1, progress=False)
    assert (result.accepted, result.new, result.existing, result.rejected) == (6, 2, 4, 0)
    assert r.zcard("tracked") == 2


def test_many_batches_pipelined(clean_env: None, r: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    n = 25_013  # not a multiple of the batch size
    path.write_bytes(b"".join(b'{"login": "u%d"}\n' % i for i in range(n)))
    result = ingest(config.load(), str(path), batch_size=100, progress=False)
    assert (result.accepted, result.new, result.rejected) == (n, n, 0)
    assert r.zcard("tracked") == n


def test_missing_dump_is_one_line_usage_error(clean_env: None, r: redis.Redis) -> None:
    proc = run_cli("ingest", "/nonexistent/dump.json")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "cannot open dump" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_gzip_is_one_line_error(clean_env: None, r: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b'{"login": "a"}\n' * 1000)[:60])
    proc = run_cli("ingest", str(path))
    assert proc.returncode == 1
    assert "cannot read dump" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_redis_down_is_one_line_error(clean_env: None, dump: Path) -> None:
    proc = run_cli("ingest", str(dump), env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 1
    assert "redis" in proc.stderr and "Traceback" not in proc.stderr


def test_reset_makes_everyone_due_in_one_step(clean_env: None, r: redis.Redis) -> None:
    r.zadd("tracked", {"github.com/a": 1_700_000_000, "github.com/b": -math.inf,
                       "github.com/c": math.inf})
    proc = run_cli("reset")
    assert proc.returncode == 0, proc.stderr
    assert dict(r.zrange("tracked", 0, -1, withscores=True)) == {
        "github.com/a": 0, "github.com/b": 0, "github.com/c": 0}


_MAXRSS = """
import resource, sys
from bulkbackup.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _ingest_rss_kb(path: Path, rejects: Path) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Run `bulkbackup ingest` in a child that reports its own peak memory (KB) last."""
    proc = subprocess.run([sys.executable, "-c", _MAXRSS, "ingest", str(path), "--rejects",
                           str(rejects)], capture_output=True, timeout=300, cwd=ROOT)
    return proc, int(proc.stderr.split()[-1])


def test_an_over_long_line_is_rejected_in_constant_memory(
    clean_env: None, r: redis.Redis, tmp_path: Path
) -> None:
    """A gzipped dump with a ~50 MB line between good ones: the good lines are ingested, the
    long one is rejected with its line number, and it is never held in memory whole."""
    big = tmp_path / "big.json"
    with gzip.open(big, "wb", compresslevel=1) as f:
        f.write(b'{"login": "before"}\n{"login": "' + b"x" * (50 * 1024 * 1024) + b'"}\n')
        f.write(b'{"login": "after"}\n' + b"y" * 70_000)  # a long last line, no newline
    small = tmp_path / "small.json"
    small.write_bytes(gzip.compress(b'{"login": "before"}\n{"login": "after"}\n'))
    _, baseline_kb = _ingest_rss_kb(small, tmp_path / "small.tsv")
    proc, peak_kb = _ingest_rss_kb(big, tmp_path / "rejects.tsv")
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.decode().splitlines()[-2]
    assert "4 lines read, 2 logins accepted" in summary and "2 rejected" in summary
    assert "line 2: line too long" in summary and "line 4: line too long" in summary
    assert set(r.zrange("tracked", 0, -1)) == {"github.com/before", "github.com/after"}
    rejects = (tmp_path / "rejects.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in rejects] == [["2", "line too long"],
                                                           ["4", "line too long"]]
    assert peak_kb - baseline_kb < 20 * 1024, (peak_kb, baseline_kb)


def test_a_line_at_the_cap_is_read(clean_env: None, r: redis.Redis, tmp_path: Path) -> None:
    from bulkbackup.queue.ingest import MAX_LINE_BYTES

    line = b'{"login": "capped", "pad": "' + b"p" * (MAX_LINE_BYTES - 30) + b'"}'
    assert len(line) == MAX_LINE_BYTES
    path = tmp_path / "cap.json"
    path.write_bytes(line + b"\n" + line[:-2] + b'p"}\n' + b'{"login": "next"}\n')
    proc = run_cli("ingest", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "2 logins accepted" in proc.stderr and "line 2: line too long" in proc.stderr
    assert set(r.zrange("tracked", 0, -1)) == {"github.com/capped", "github.com/next"}


def test_a_redis_url_redis_cannot_use_is_exit_2(clean_env: None, dump: Path) -> None:
    for cmd in (["ingest", str(dump)], ["reset"]):
        proc = run_cli(*cmd, env={"REDIS_URL": "foo://x"})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("bulkbackup: error: invalid redis.url: 'foo://x'")
        assert proc.stderr.count("\n") == 1
