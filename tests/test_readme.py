"""The README's quick start, pasted as a new user would, against the GitHub stand-in.

Only two things differ from the README: the token is one the stand-in accepts, and the API is
the stand-in's (`GITHUB_API_URL`). Everything else runs as written, from an empty folder, on the
default relative store path, with no Redis reachable (`sync`, `show` and `restore` need none).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bulkbackup.testing.forge import Forge, sample
from tests.helpers import ROOT, run_cli


def quick_start_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    return [line.split("#", 1)[0].strip() for line in block.splitlines()
            if line.split("#", 1)[0].strip()]


def test_the_quick_start_works_when_pasted(clean_env: None, forge: Forge, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sample(forge)
    monkeypatch.delenv("BULKBACKUP_STORE", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    cwd = tmp_path / "newuser"
    cwd.mkdir()
    lines = quick_start_lines()
    assert [ln.split()[0] for ln in lines] == ["pip", "export", "bulkbackup", "bulkbackup",
                                               "bulkbackup", "git"]
    ran = []
    for line in lines:
        words = shlex.split(line)
        if words[0] == "pip":
            continue  # installed already
        if words[0] == "export":
            name, _, _ = words[1].partition("=")
            assert name == "GITHUB_TOKEN"
            monkeypatch.setenv(name, "readme-quick-start-token")
            continue
        if words[0] == "bulkbackup":
            proc = run_cli(*words[1:], cwd=cwd, env=dict(os.environ))
        else:
            proc = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"`{line}` exited {proc.returncode}: {proc.stderr[-2000:]}"
        ran.append((line, proc.stdout))
    assert (cwd / "backup" / "github.com" / "octocat" / "Hello-World.bundle").is_file()
    assert "Hello-World" in ran[1][1]  # show
    clone = cwd / "Hello-World"
    assert (clone / "README.md").is_file() or any(clone.iterdir())
    branches = subprocess.run(["git", "branch", "-a"], cwd=clone, capture_output=True,
                              text=True, check=True).stdout
    assert "dev" in branches
