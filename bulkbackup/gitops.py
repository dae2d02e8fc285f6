"""Mirror, bundle and zip one repository with git; every git call has a timeout.

GitPython inspects the mirror (refs, default branch) and every `Repo` is closed, or it would
leave `git cat-file` processes behind. Commands run in their own process group so a timeout
kills git and its helpers (`git-remote-https`) together; GitPython's clone has no timeout.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import git

from bulkbackup.config import GitHubSettings, RunSettings
from bulkbackup.errors import GitError
from bulkbackup.redact import redact

_ACTIVE: set[int] = set()
_ACTIVE_MU = threading.Lock()
# Environment variables git may inherit; nothing else (no tokens, no cloud credentials).
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "http_proxy", "https_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
             "GIT_SSL_CAINFO")


@dataclass(frozen=True)
class Archive:
    """What was built for one repository. ``bundle`` is None for an empty repository."""

    bundle: Path | None
    zip: Path | None
    branch: str | None
    refs: int


def kill_all() -> None:
    """Kill every git command this process started (used when a worker stops at once)."""
    with _ACTIVE_MU:
        groups = list(_ACTIVE)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def git_env(home: Path, gh: GitHubSettings, token: str | None) -> dict[str, str]:
    """A closed environment: no prompts, no credential helpers, no user config, http(s) only.

    The token travels as an HTTP header set through GIT_CONFIG_* variables, which git never
    writes to the repository's config or prints; it is scoped to the clone host.
    """
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.update(
        HOME=str(home),
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="http:https",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        GCM_INTERACTIVE="never",
    )
    config = [("credential.helper", ""), ("core.askPass", ""), ("http.followRedirects", "initial")]
    if token and gh.token_for_git:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        for scheme in ("https", "http"):
            config.append((f"http.{scheme}://{gh.clone_host}/.extraHeader",
                           f"Authorization: Basic {basic}"))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def run_git(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    """Run ``git args`` in its own process group; kill the group on timeout."""
    proc = subprocess.Popen(
        ["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    with _ACTIVE_MU:
        _ACTIVE.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise GitError(f"git {args[0]} timed out after {timeout_s:g}s") from None
    finally:
        with _ACTIVE_MU:
            _ACTIVE.discard(proc.pid)
    if proc.returncode != 0:
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise GitError(f"git {args[0]} failed: {redact(why)[:300]}")
    return out.decode("utf-8", "replace")


class GitWork:
    """Builds archives for one worker process under its own work directory."""

    def __init__(self, run: RunSettings, gh: GitHubSettings, work_dir: Path) -> None:
        self.run = run
        self.gh = gh
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)

    def user_dir(self, login: str) -> Path:
        return self.work_dir / login

    def cleanup(self, login: str) -> None:
        shutil.rmtree(self.user_dir(login), ignore_errors=True)

    def archive(
        self,
        login: str,
        name: str,
        clone_url: str,
        default_branch: str | None,
        token: str | None,
        check: Callable[[], None] = lambda: None,
    ) -> Archive:
        """Mirror ``clone_url``, then write `<name>.bundle` and `<name>.zip` beside it.

        ``check`` runs between steps; it raises to abandon the work (lock lost, stopping).
        Files are left in ``user_dir(login)`` for the caller to upload, then ``cleanup``.
        """
        base = self.user_dir(login)
        base.mkdir(parents=True, exist_ok=True)
        mirror = base / f"{name}.git"
        bundle = base / f"{name}.bundle"
        zipfile = base / f"{name}.zip"
        for stale in (bundle, zipfile):
            stale.unlink(missing_ok=True)
        shutil.rmtree(mirror, ignore_errors=True)
        env = git_env(self.work_dir, self.gh, token)
        deadline = time.monotonic() + self.run.git_timeout_s

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GitError(f"git timed out after {self.run.git_timeout_s:g}s")
            return remaining

        clone = ["clone", "--mirror", "--quiet"]
        if not self.run.pull_refs:
            # A negative refspec: GitHub's refs/pull/* are neither fetched nor bundled.
            clone += ["-c", "remote.origin.fetch=^refs/pull/*"]
        try:
            run_git([*clone, "--", clone_url, str(mirror)], base, env, left())
            check()
            refs, branch = self._inspect(mirror, default_branch)
            if refs == 0:
                return Archive(bundle=None, zip=None, branch=None, refs=0)
            run_git(["bundle", "create", "--quiet", str(bundle), "--all"], mirror, env, left())
            check()
            if branch is not None:
                prefix = f"{name}-{branch.replace('/', '-')}/"
                run_git(["archive", "--format=zip", f"--prefix={prefix}", "-o", str(zipfile),
                         f"refs/heads/{branch}"], mirror, env, left())
            return Archive(bundle=bundle, zip=zipfile if branch else None, branch=branch,
                           refs=refs)
        finally:
            shutil.rmtree(mirror, ignore_errors=True)

    @staticmethod
    def _inspect(mirror: Path, default_branch: str | None) -> tuple[int, str | None]:
        """(number of refs, the branch to zip): the API's default branch if the mirror has
        it, else whatever HEAD points to."""
        repo = git.Repo(mirror)
        try:
            refs = [r.path for r in repo.references]
            heads = {h.name for h in repo.heads}
            if default_branch and default_branch in heads:
                return len(refs), default_branch
            try:
                head = repo.head.reference.name
            except (TypeError, ValueError):
                head = None
            return len(refs), head if head in heads else (min(heads) if heads else None)
        finally:
            repo.close()
