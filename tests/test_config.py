"""Settings: the file, the environment over it, and clear errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkbackup import config
from bulkbackup.cli import build_parser
from bulkbackup.errors import ConfigError
from tests.helpers import ROOT, run_cli


def test_the_documented_file_is_the_defaults() -> None:
    documented = config.load(ROOT / "config.yaml", environ={"BULKBACKUP_WORKER_HOST": "h"})
    builtin = config._apply_env(config.Settings(), {"BULKBACKUP_WORKER_HOST": "h"})
    assert documented == builtin


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("redis:\n  url: redis://file:1/0\ngithub:\n  tokens: [a]\n")
    s = config.load(cfg, environ={
        "REDIS_URL": "unix:///tmp/r.sock", "BULKBACKUP_STORE": "s3://github.com",
        "GITHUB_API_URL": "http://127.0.0.1:9/", "GITHUB_TOKEN": "t1",
        "GITHUB_TOKENS": "t2, t3,t1", "BULKBACKUP_WORKER_HOST": "w7"})
    assert s.redis.url == "unix:///tmp/r.sock"
    assert s.store.url == "s3://github.com"
    assert s.github.api_url == "http://127.0.0.1:9"
    assert s.github.clone_host == "127.0.0.1:9"
    assert s.github.tokens == ("t1", "t2", "t3")
    assert s.run.worker_host == "w7"
    assert "t1" not in repr(s)  # tokens never reach a repr (and so no log line)


def test_github_clone_host_defaults() -> None:
    assert config.GitHubSettings().clone_host == "github.com"
    assert config.GitHubSettings(api_url="https://ghe.example/api/v3").clone_host == "ghe.example"
    assert config.GitHubSettings(git_host="Git.Example").clone_host == "git.example"


@pytest.mark.parametrize("text, message", [
    ("redis:\n  urll: x\n", "unknown config key: redis.urll"),
    ("nonsense: 1\n", "unknown config key: nonsense"),
    ("run:\n  procs: many\n", "run.procs: expected an integer"),
    ("run:\n  skip_forks: 1\n", "run.skip_forks: expected true or false"),
    ("github:\n  tokens: a\n", "github.tokens: expected a list of strings"),
    ("- a\n", "top level must be a mapping"),
    ("run: [1\n", "cannot read config"),
    ("run:\n  lock_ttl_s: 1\n", "run.lock_ttl_s must be at least 2"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        config.load(cfg, environ={})
    proc = run_cli("--config", str(cfg), "reset")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message.split(":")[0] in proc.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    proc = run_cli("--config", str(tmp_path / "nope.yaml"), "stats")
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_every_subcommand_documents_its_flags() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    for cmd in ("ingest", "run", "stats", "sync", "show", "rebuild", "reset"):
        assert cmd in help_text
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for flag in ("--procs", "--max-users", "--no-stats"):
        assert flag in proc.stdout
    proc = run_cli("ingest", "--help")
    for flag in ("--limit", "--batch-size", "--rejects"):
        assert flag in proc.stdout


def test_usage_errors_exit_2() -> None:
    assert run_cli("run", "--procs", "0").returncode == 2
    assert run_cli("bogus").returncode == 2
