"""Mirror, bundle and zip one repository with git; every git call has a timeout.

GitPython inspects the mirror (refs, default branch) and every `Repo` is closed, or it would
leave `git cat-file` processes behind. Commands run in their own process group so a timeout,
an interrupt or any other exit kills git and its helpers (`git-remote-https`) together;
GitPython's clone has no timeout.
"""

from __future__ import annotations

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
from typing import Any

import git

from bulkbackup.config import RunSettings
from bulkbackup.errors import GitError
from bulkbackup.git.auth import GitAuth
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
    branch: str | None  # the branch zipped, and the bundle's HEAD
    # The mirror, left for the caller (archive(keep_mirror=True): to find the LFS pointers
    # in it) to remove; None otherwise.
    mirror: Path | None = None


def kill_all() -> None:
    """Kill every git command this process started (used when a worker stops at once)."""
    with _ACTIVE_MU:
        groups = list(_ACTIVE)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def git_env(home: Path, auth: GitAuth | None, run: RunSettings | None = None,
            procs: int = 1) -> dict[str, str]:
    """A closed environment: no prompts, no credential helpers, no user config, http(s) only,
    git's transfer and memory limits from ``run`` (its threads shared among ``procs``
    processes running git side by side).

    ``auth``'s token (None: anonymous) travels as an HTTP header set through GIT_CONFIG_*
    variables, which git never writes to the repository's config or prints; it is scoped to
    its schemes (https://) on its host, the clone host.
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
    # Never follow a redirect. git matches `http.<url>.extraHeader` against the URL it was
    # given, once, and with "initial" it then sends the header to wherever info/refs
    # redirected (another host included) on every later request. Checking the target
    # ourselves would mean predicting git's and curl's redirect rules (and http-alternates)
    # across versions; "false" gives one invariant instead: git only ever talks to the URL
    # we validated against the clone host, token or not. The cost: a repository renamed
    # between its listing and its clone fails this pass; the next listing has its new name.
    config = [("credential.helper", ""), ("core.askPass", ""), ("http.followRedirects", "false"),
              # No automatic gc/maintenance after a fetch: it may detach into its own session,
              # out of reach of the group kill, and work on a mirror being deleted.
              ("gc.auto", "0"), ("maintenance.auto", "false"),
              # A faithful copy: real history holds objects today's fsck flags (a 2011 time
              # zone `+051800`) that GitHub serves; a checking fetch would refuse them.
              ("fetch.fsckObjects", "false")]
    run = run or RunSettings()
    config += _limits(run, git_threads(run, procs))
    if auth is not None and auth.sends_token():
        for scheme in auth.schemes:
            config.append((f"http.{scheme}://{auth.host}/.extraHeader",
                           f"Authorization: {auth.basic()}"))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def git_threads(run: RunSettings, procs: int) -> int:
    """Threads per git command: `run.git_threads`, or (0, the default) the cores this process
    may run on shared among the run's ``procs`` worker processes, at least 1. One thread
    made a lone large first archive 1.6x slower than plain git (index-pack resolves deltas,
    pack-objects searches them, with a thread per core)."""
    if run.git_threads > 0:
        return run.git_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, procs))


def _limits(run: RunSettings, threads: int) -> list[tuple[str, str]]:
    """git's own bounds: a stalled transfer ends, and memory does not grow with the largest
    file or the number of threads.

    Fetching (index-pack) and bundling (pack-objects) run pack.threads threads, each with its
    own delta caches: index-pack's delta bases (core.deltaBaseCacheLimit) and pack-objects'
    delta window (pack.windowMemory) are per thread, so they are shared out: a git command's
    total stays that of one thread (64m and 256m), whatever the thread count (down to 8m
    and 32m a thread; git's default of a thread per core in each of `--procs 32` processes
    on 32 cores would be 1024 threads with 96m each). core.bigFileThreshold makes
    index-pack, pack-objects and archive stream larger blobs instead of holding them whole
    (GitHub refuses files above 100 MB, but bundles of older history can hold bigger ones).
    Fixed caps for the rest: pack-objects' delta cache (pack.deltaCacheSize, one for all
    threads) and the pack files mapped at once (core.packedGitLimit, in windows of
    core.packedGitWindowSize).
    """
    limits = [("pack.threads", str(threads)),
              ("core.bigFileThreshold", f"{run.git_big_file_mb}m"),
              ("core.deltaBaseCacheLimit", f"{max(8, 64 // threads)}m"),
              ("pack.windowMemory", f"{max(32, 256 // threads)}m"),
              ("pack.deltaCacheSize", "64m"), ("core.packedGitWindowSize", "32m"),
              ("core.packedGitLimit", "256m")]
    if run.git_low_speed_bytes_s > 0:  # curl's CURLOPT_LOW_SPEED_LIMIT/_TIME
        limits += [("http.lowSpeedLimit", str(run.git_low_speed_bytes_s)),
                   ("http.lowSpeedTime", str(run.git_low_speed_time_s))]
    return limits


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill git's whole process group (its helpers too) and reap git."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # git is its group's leader: the id is still its
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    proc.wait()


def run_git(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float,
            what: str = "") -> str:
    """Run ``git args`` in its own process group; kill the group on a timeout and on any
    other way out (KeyboardInterrupt, SystemExit, an error while waiting). ``what`` names the
    step in errors (default: the git command)."""
    out = _communicate(args, cwd, env, timeout_s, subprocess.DEVNULL, subprocess.PIPE,
                       what or args[0])
    return out.decode("utf-8", "replace")


def run_git_files(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float,
                  stdin: Path, stdout: Path, what: str = "") -> None:
    """``git args`` reading ``stdin`` and writing ``stdout`` (files: an output as large as a
    repository's object list is never held in memory), bounded and killed as run_git's."""
    with stdin.open("rb") as src, stdout.open("wb") as dst:
        _communicate(args, cwd, env, timeout_s, src, dst, what or args[0])


def _communicate(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float,
                 stdin: Any, stdout: Any, what: str) -> bytes:
    """git's stdout (b"" when it goes to a file); GitError on a failure or a timeout. The
    process group is killed on a timeout and on any other way out."""
    proc = subprocess.Popen(["git", *args], cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                            stderr=subprocess.PIPE, start_new_session=True)
    with _ACTIVE_MU:
        _ACTIVE.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise GitError(f"git {what} timed out after {timeout_s:g}s") from None
    except BaseException:
        _kill(proc)
        raise
    finally:
        with _ACTIVE_MU:
            _ACTIVE.discard(proc.pid)
    if proc.returncode != 0:
        raise GitError(f"git {what} failed: {redact(_why(err, proc.returncode))[:300]}")
    return out or b""


def _why(err: bytes, status: int) -> str:
    """The line of git's stderr that says what went wrong: usually the last one."""
    lines = [ln.strip() for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    for line in lines:
        if "Operation too slow" in line:  # curl's low-speed limit: say so plainly
            return f"stalled: {line}"
    return lines[-1] if lines else f"exit status {status}"


def _zip(repo: Path, name: str, branch: str, rev: str, zipfile: Path, env: dict[str, str],
         timeout_s: float) -> None:
    """`git archive` of ``rev`` as GitHub zips a branch: top folder `<repo>-<branch>/`."""
    prefix = f"{name}-{branch.replace('/', '-')}/"
    run_git(["archive", "--format=zip", f"--prefix={prefix}", "-o", str(zipfile), rev], repo,
            env, timeout_s)


class GitWork:
    """Builds archives for one worker process under its own work directory."""

    def __init__(self, run: RunSettings, work_dir: Path, procs: int = 1) -> None:
        """``procs``: how many worker processes of this run archive side by side."""
        self.run = run
        self.work_dir = work_dir
        self.procs = procs
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
        auth: GitAuth,
        check: Callable[[], None] = lambda: None,
        keep_mirror: bool = False,
    ) -> Archive:
        """Mirror ``clone_url``, then write `<name>.bundle` and `<name>.zip` beside it.

        ``check`` runs between steps; it raises to abandon the work (lock lost, stopping).
        ``auth``: the token, if any, and where it may go (the forge's `GitAuth`).
        Files are left in ``user_dir(login)`` for the caller to upload, then ``cleanup``;
        with ``keep_mirror`` the mirror of a repository with refs too (Archive.mirror).
        """
        base = self.user_dir(login)
        base.mkdir(parents=True, exist_ok=True)
        mirror = base / f"{name}.git"
        bundle = base / f"{name}.bundle"
        zipfile = base / f"{name}.zip"
        for stale in (bundle, zipfile):
            stale.unlink(missing_ok=True)
        shutil.rmtree(mirror, ignore_errors=True)
        env = git_env(self.work_dir, auth, self.run, self.procs)
        left = self._time_left()
        kept: Path | None = None
        try:
            self._mirror(clone_url, mirror, base, env, left)
            check()
            refs, branch = self._inspect(mirror, default_branch)
            if refs == 0:
                return Archive(bundle=None, zip=None, branch=None)
            run_git(["bundle", "create", "--quiet", str(bundle), "--all"], mirror, env, left())
            check()
            if branch is not None:
                _zip(mirror, name, branch, f"refs/heads/{branch}", zipfile, env, left())
            kept = mirror if keep_mirror else None
            return Archive(bundle=bundle, zip=zipfile if branch else None, branch=branch,
                           mirror=kept)
        finally:
            if kept is None:
                shutil.rmtree(mirror, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """git's environment for local work (no token: nothing is fetched with it)."""
        return git_env(self.work_dir, None, self.run, self.procs)

    def _time_left(self) -> Callable[[], float]:
        """Seconds left of one repository's `run.git_timeout_s`, for each git call in turn."""
        deadline = time.monotonic() + self.run.git_timeout_s

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GitError(f"git timed out after {self.run.git_timeout_s:g}s")
            return remaining

        return left

    def zip_from(self, login: str, name: str, repo: Path, branch: str, commit: str) -> Path:
        """`<name>.zip` of ``commit`` (the tip of ``branch``) from the local ``repo`` that
        has it: an increment's proof repository (the new state; no fetch)."""
        base = self.user_dir(login)
        base.mkdir(parents=True, exist_ok=True)
        zipfile = base / f"{name}.zip"
        zipfile.unlink(missing_ok=True)
        env = git_env(self.work_dir, None, self.run, self.procs)
        _zip(repo, name, branch, commit, zipfile, env, self.run.git_timeout_s)
        return zipfile

    def _mirror(self, clone_url: str, mirror: Path, base: Path, env: dict[str, str],
                left: Callable[[], float]) -> None:
        """What `git clone --mirror` fetches, without GitHub's refs/pull/* (unless
        run.pull_refs) or any object only they reach.

        `clone --mirror -c remote.origin.fetch=^refs/pull/*` ignores the negative refspec in
        its initial fetch (git 2.39), so: an empty bare repository, then one fetch with
        explicit refspecs (one info/refs request, as a clone). The fetch does not learn the
        remote's HEAD; the caller points HEAD at the branch it zips (the API's default
        branch, which is GitHub's HEAD).
        """
        run_git(["init", "--bare", "--quiet", "--template=", str(mirror)], base, env, left(),
                what="clone")
        refspecs = ["+refs/*:refs/*"] if self.run.pull_refs else ["+refs/*:refs/*",
                                                                  "^refs/pull/*"]
        run_git(["fetch", "--quiet", "--no-write-fetch-head", "--", clone_url, *refspecs],
                mirror, env, left(), what="clone")

    @staticmethod
    def _inspect(mirror: Path, default_branch: str | None) -> tuple[int, str | None]:
        """(number of refs, the branch to zip): the API's default branch if the mirror has
        it, else whatever HEAD points to, else the first branch. HEAD then points to it, so
        the bundle's HEAD is the repository's default branch."""
        repo = git.Repo(mirror)
        try:
            refs = [r.path for r in repo.references]
            heads = {h.name: h for h in repo.heads}
            try:
                head = repo.head.reference.name
            except (TypeError, ValueError):
                head = None
            branch = (default_branch if default_branch in heads else head if head in heads
                      else min(heads) if heads else None)
            if branch is not None and branch != head:
                repo.head.reference = heads[branch]
            return len(refs), branch
        finally:
            repo.close()
