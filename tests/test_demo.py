"""The README's first command, `jobs/demo.sh`, end to end (install step skipped: done)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def test_demo_runs_end_to_end(redis_url: str, clean_env: None, tmp_path: Path) -> None:
    store = tmp_path / "backup" / "github.com"
    proc = subprocess.run(
        ["bash", str(ROOT / "jobs" / "demo.sh")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "BULKBACKUP_STORE": str(store),
             "BULKBACKUP_DEMO_SKIP_INSTALL": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "3 logins accepted" in proc.stderr and "1 rejected" in proc.stderr
    assert "3 users synced" in proc.stderr
    assert "repositories.archived" in out and "user octocat" in out
    assert "restoring" in out and "README.md" in out  # cloned back from a bundle
    assert (store / "octocat" / "Hello-World.bundle").stat().st_size > 0
