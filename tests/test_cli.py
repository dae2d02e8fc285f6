"""The command line an operator meets first: options, configuration errors, exit codes.

Every case goes through the real `bulkbackup` process; S3 cases against a real moto_server.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port, start_moto
from tests.helpers import ROOT, run_cli


def one_line_error(proc: object, *needles: str) -> None:
    """Exit 2 with exactly one line on stderr naming every needle, no traceback."""
    rc, err = proc.returncode, proc.stderr  # type: ignore[attr-defined]
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("bulkbackup: error: "), err
    for needle in needles:
        assert needle in err, err


def config_file(tmp_path: Path, text: str | bytes) -> Path:
    cfg = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    return cfg


# -- configuration files ----------------------------------------------------------------------

def test_yaml_syntax_error_names_line_and_column(clean_env: None, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "redis:\n  url: redis://x\nrun:\n  procs: [1\n")
    one_line_error(run_cli("--config", str(cfg), "reset"), str(cfg), "line 5, column 1")
    cfg = config_file(tmp_path, "run:\n  procs: 1\n   bad: 2\n")
    one_line_error(run_cli("--config", str(cfg), "reset"), "line 3, column")


def test_invalid_utf8_config_is_one_line(clean_env: None, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, b"run:\n  work_dir: \xff\xfe\n")
    one_line_error(run_cli("--config", str(cfg), "reset"), "not UTF-8")


@pytest.mark.parametrize("text, needle", [
    ("github:\n  timeout_s: 0\n", "github.timeout_s must be at least 0.1, not 0"),
    ("github:\n  timeout_s: -5\n", "github.timeout_s must be at least"),
    ("github:\n  max_retries: -1\n", "github.max_retries must be at least 0"),
    ("run:\n  procs: 0\n", "run.procs must be at least 1, not 0"),
    ("run:\n  git_timeout_s: -1\n", "run.git_timeout_s must be at least"),
    ("run:\n  max_attempts: 0\n", "run.max_attempts must be at least 1"),
    ("run:\n  grace_s: .nan\n", "run.grace_s must be a finite number"),
    ("redis:\n  socket_timeout_s: .inf\n", "redis.socket_timeout_s must be a finite number"),
    ("store:\n  list_page_size: 5000\n", "store.list_page_size must be at most 1000"),
    ("ingest:\n  batch_size: 0\n", "ingest.batch_size must be at least 1"),
])
def test_numbers_out_of_range_are_refused(
    clean_env: None, tmp_path: Path, text: str, needle: str
) -> None:
    cfg = config_file(tmp_path, text)
    one_line_error(run_cli("--config", str(cfg), "run"), needle)


@pytest.mark.parametrize("url, needle", [
    ("s4://x", "unknown scheme 's4://'"),
    ("file:///tmp/x", "unknown scheme 'file://'"),
    ("s3://", "no bucket name"),
    ("s3://a/b", "only a bucket is allowed"),
])
def test_store_urls_that_are_not_a_folder_or_a_bucket(
    clean_env: None, tmp_path: Path, url: str, needle: str
) -> None:
    proc = run_cli("show", "octocat", env={"BULKBACKUP_STORE": url}, cwd=tmp_path)
    one_line_error(proc, needle)
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]  # no folder named `s4:`


@pytest.mark.parametrize("endpoint", ["localhost:9000", "http://h:port", "ftp://h"])
def test_a_malformed_s3_endpoint_is_one_line(
    clean_env: None, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    proc = run_cli("show", "octocat", env={"BULKBACKUP_STORE": "s3://github.com"})
    one_line_error(proc, "AWS_ENDPOINT_URL_S3")


def test_a_redis_url_redis_cannot_use(clean_env: None, tmp_path: Path) -> None:
    dump = tmp_path / "d.json"
    dump.write_text('{"login": "a"}\n')
    for cmd in (["ingest", str(dump)], ["reset"], ["rebuild"], ["stats"]):
        proc = run_cli(*cmd, env={"REDIS_URL": "foo://x",
                                  "BULKBACKUP_STORE": str(tmp_path / "store")})
        one_line_error(proc, "invalid redis.url")


# -- the store refuses ------------------------------------------------------------------------

def test_a_missing_bucket_without_create_bucket_is_exit_2(
    clean_env: None, redis_url: str, s3_endpoint: str, tmp_path: Path
) -> None:
    cfg = config_file(tmp_path, "store:\n  create_bucket: false\n")
    for cmd in (["run", "--procs", "1"], ["stats"], ["sync", "octocat"]):
        proc = run_cli("--config", str(cfg), *cmd, env={"BULKBACKUP_STORE": "s3://nope"})
        one_line_error(proc, "bucket nope does not exist", "create_bucket")
    assert boto3.client("s3").list_buckets()["Buckets"] == []


def test_an_invalid_bucket_name_says_why(clean_env: None, s3_endpoint: str) -> None:
    proc = run_cli("show", "octocat", env={"BULKBACKUP_STORE": "s3://bad:name"})
    one_line_error(proc, 'Invalid bucket name "bad:name"', "must match")


@pytest.fixture
def moto_with_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Iterator[str]:
    """A moto_server that checks credentials (IAM auth on from the first request)."""
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    port = free_port()
    proc = start_moto(port, tmp_path / "moto.log")
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_credentials_the_store_refuses_are_exit_2(moto_with_auth: str) -> None:
    env = {"AWS_ENDPOINT_URL_S3": moto_with_auth, "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY",
           "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_REGION": "us-east-1",
           "BULKBACKUP_STORE": "s3://github.com"}
    for cmd in (["show", "octocat"], ["sync", "octocat"]):
        proc = run_cli(*cmd, env=env)
        one_line_error(proc, "refuses access to bucket github.com", "403")
        assert "wrong" not in proc.stderr


def test_missing_credentials_are_exit_2(clean_env: None, s3_endpoint: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "no-aws-files"
    env = {"BULKBACKUP_STORE": "s3://github.com", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}
    for cmd in (["show", "octocat"], ["stats"]):
        proc = run_cli(*cmd, env=env)
        one_line_error(proc, "no usable S3 credentials", "AWS_ACCESS_KEY_ID")
    # Half of them (a key id without its secret) is a setup error too.
    proc = run_cli("show", "octocat", env={**env, "AWS_ACCESS_KEY_ID": "AKIAONLY"})
    assert proc.returncode == 2, proc.stderr


# -- options ----------------------------------------------------------------------------------

def test_abbreviated_options_are_refused() -> None:
    proc = run_cli("run", "--proc", "4")
    assert proc.returncode == 2 and "unrecognized arguments: --proc" in proc.stderr
    proc = run_cli("--conf", "x.yaml", "reset")
    assert proc.returncode == 2
    proc = run_cli("stats", "--no-wr")
    assert proc.returncode == 2 and "--no-wr" in proc.stderr


def test_a_mistyped_option_gets_the_commands_usage_and_the_closest_option() -> None:
    proc = run_cli("run", "--proc", "4")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: bulkbackup run "), proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "bulkbackup run: error: unrecognized arguments: --proc 4 (did you mean --procs?)")
    proc = run_cli("serve", "--prot=9")
    assert proc.returncode == 2 and "usage: bulkbackup serve " in proc.stderr
    assert "(did you mean --port?)" in proc.stderr
    # Nothing close: no guess.
    proc = run_cli("stats", "--frobnicate")
    assert proc.returncode == 2 and "usage: bulkbackup stats " in proc.stderr
    assert "did you mean" not in proc.stderr


def test_global_options_work_after_the_command(clean_env: None, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "run:\n  procs: 0\n")
    for args in (["--config", str(cfg), "reset"], ["reset", "--config", str(cfg)]):
        one_line_error(run_cli(*args), "run.procs")
    # --debug after the command: the traceback is shown.
    proc = run_cli("reset", "--config", str(cfg), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = run_cli("--debug", "reset", "--config", str(cfg))
    assert "Traceback" in proc.stderr  # the value before the command is kept
    for cmd in ("ingest", "run", "stats", "sync", "show", "rebuild", "reset"):
        help_text = run_cli(cmd, "--help").stdout
        assert "--config" in help_text and "--debug" in help_text, cmd


# -- exit codes: a recorded problem is a result ------------------------------------------------

@pytest.fixture
def forge_env(
    clean_env: None, redis_url: str, tmp_path: Path, forge: Forge,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    store = tmp_path / "backup" / "github.com"
    monkeypatch.setenv("BULKBACKUP_STORE", str(store))
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    forge.add_user("octocat", [RepoSpec("good"), RepoSpec("deleted", missing=True)])
    return store


def test_sync_and_run_agree_on_recorded_problems(
    forge_env: Path, r: redis.Redis
) -> None:
    """A repository deleted upstream and a user gone (404) are recorded in the store: both
    `sync` and `run` exit 0 and count the users with errors."""
    proc = run_cli("sync", "octocat", "ghost")
    assert proc.returncode == 0, proc.stderr
    assert "sync: 2 users, 2 with errors" in proc.stderr
    assert "octocat: 2 repositories, 1 archived" in proc.stdout and "1 failed" in proc.stdout
    r.zadd("tracked", {"github.com/octocat": float("-inf"), "github.com/ghost": float("-inf")})
    proc = run_cli("run", "--procs", "1", "--no-stats")
    assert proc.returncode == 0, proc.stderr
    assert "2 users synced" in proc.stderr and "2 users with errors" in proc.stderr


def test_sync_exits_1_when_the_store_cannot_record(forge_env: Path) -> None:
    forge_env.parent.mkdir(parents=True)
    forge_env.write_text("a file where the store folder should be")
    proc = run_cli("sync", "octocat")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "store" in proc.stderr


# -- serve's start-up -------------------------------------------------------------------------

def test_serve_on_a_port_in_use_is_one_line_and_exit_1(clean_env: None, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--port", str(port),
                       env={"BULKBACKUP_STORE": str(tmp_path / "store")})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"bulkbackup: error: serve: cannot listen on 127.0.0.1:{port}: "
                           "Address already in use\n")


def test_serve_with_a_missing_store_folder_exits_2_as_show(clean_env: None, tmp_path: Path
                                                           ) -> None:
    env = {"BULKBACKUP_STORE": str(tmp_path / "nowhere")}
    for args in (["show", "octocat"], ["serve", "--port", "0"]):
        one_line_error(run_cli(*args, env=env), f"store folder {env['BULKBACKUP_STORE']} "
                       "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_serve_on_port_0_prints_the_port_it_listens_on(clean_env: None, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkbackup", "serve", "--port", "0"], cwd=ROOT,
        env={**os.environ, "BULKBACKUP_STORE": str(tmp_path / "store")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.fullmatch(r"bulkbackup serve: http://127\.0\.0\.1:(\d+)/ \(Ctrl-C stops\)\n",
                             first)
        assert match and int(match[1]) > 0, first
        # That address answers (the health check needs Redis, not there: 503 is an answer).
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{match[1]}/healthz", timeout=5):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
