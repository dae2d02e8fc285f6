"""git run on local repositories in a closed environment (restore, verify, the increment's
proof, fsck): no prompts, no user config, local files only, each call bounded."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from bulkbackup.config import Settings
from bulkbackup.errors import ArchiveError, printable
from bulkbackup.git.gitops import git_env


class Git:
    """git in a closed environment (no prompts, no user config, local files only), each call
    bounded by ``run.git_timeout_s`` and killed with its process group on timeout."""

    def __init__(self, settings: Settings, home: Path) -> None:
        self.timeout_s = settings.run.git_timeout_s
        self.env = git_env(home, None, settings.run)  # one process: its cores
        self.env["GIT_ALLOW_PROTOCOL"] = "file"  # a bundle is fetched as a local file

    def __call__(self, *args: str, cwd: Path, stdin: int = subprocess.DEVNULL) -> str:
        """git's stdout; ArchiveError naming git's first error when it fails. ``stdin``: a
        file descriptor git reads (from its current offset)."""
        status, out, err = self.run(*args, cwd=cwd, stdin=stdin)
        if status != 0:
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines
            why = fatal[0] if fatal else f"exit status {status}"
            raise ArchiveError(f"git {args[0]} failed: {printable(why[:300])}")
        return out

    def run(self, *args: str, cwd: Path, stdin: int = subprocess.DEVNULL
            ) -> tuple[int, str, str]:
        """(exit status, stdout, stderr), whatever the status; ArchiveError on a timeout."""
        proc = subprocess.Popen(["git", *args], cwd=cwd, env=self.env, stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ArchiveError(f"git {args[0]} timed out after {self.timeout_s:g}s") from None
        return (proc.returncode, out.decode("utf-8", "replace"),
                err.decode("utf-8", "replace"))

    def refs(self, repo: Path) -> dict[str, str]:
        out = self("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo)
        return {ref: sha for sha, _, ref in (ln.partition(" ") for ln in out.splitlines())}
