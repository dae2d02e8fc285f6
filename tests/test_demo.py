"""The README's first command, `jobs/demo.sh`, end to end (install step skipped: done)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import redis

from tests.helpers import ROOT


def test_demo_runs_end_to_end_on_its_own_redis(
    redis_url: str, r: redis.Redis, clean_env: None, tmp_path: Path
) -> None:
    """Without REDIS_URL the demo starts its own redis-server on a free port and stops it at
    the end: it never uses (or leaves keys in) a Redis that happens to answer on 6379."""
    store = tmp_path / "backup" / "github.com"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        ["bash", str(ROOT / "jobs" / "demo.sh")], capture_output=True, text=True, timeout=300,
        env={**env, "BULKBACKUP_STORE": str(store), "BULKBACKUP_DEMO_SKIP_INSTALL": "1",
             "PYTHON": sys.executable},  # the interpreter running the tests, not PATH's python3
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "3 logins accepted" in proc.stderr and "1 rejected" in proc.stderr
    assert "3 users synced" in proc.stderr
    assert "repositories.archived" in out and "user octocat" in out
    assert "restoring" in out and "README.md" in out  # cloned back from a bundle
    assert (store / "octocat" / "Hello-World.bundle").stat().st_size > 0
    found = re.search(r"own redis-server on port (\d+)", out)
    assert found, out
    with socket.socket() as s:  # stopped: nothing answers on its port any more
        assert s.connect_ex(("127.0.0.1", int(found.group(1)))) != 0
    assert r.dbsize() == 0  # the tests' own Redis (another port) was not touched either
