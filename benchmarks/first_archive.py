"""A first archive of one large repository: `bulkbackup sync` against plain git doing the same
work, side by side in one run (issue 26 item 4).

    python -m benchmarks.first_archive [--source BARE_REPO] [--size-mb 100] [--rounds 3]
                                       [--threads N] [--vs-threads 1]

The repository: --source (a bare repository, e.g. a real one; its refs/pull/* are left out,
as sync leaves them out), else one generated with `git fast-import` and cached in --cache:
text files edited ten lines at a time over many commits, so the pack is mostly deltas
(what makes index-pack and pack-objects work). The stand-in forge serves a hard-linked copy.

Each round runs, in turn (A B A B ...):
  A  `bulkbackup sync` of its user into a fresh local store (fetch, bundle, zip, store);
  B  plain git with git's defaults (no user or system config): `git clone --mirror`,
     `git bundle create --all`, `git archive --format=zip HEAD`.
For each: wall seconds and CPU seconds (user + system of the process and everything it
waited for: os.wait4, so the forge's server-side git is not counted). The ratio B/A of the
medians: >= 0.95 is the target (bulkbackup at least 95 % of plain git's speed).
--threads sets run.git_threads for A (default 0: the cores); --vs-threads 1 adds an arm A'
with one thread (the behaviour before), so before and after are paired in one run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.repos import BASE_TIME, commit

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "bulkbackup-bench-first-archive"
MB = 1024 * 1024
GENERATOR = 1  # bump when the generated content changes: the cache key names it


def _history(size_mb: float) -> Iterator[bytes]:
    """200 text files of ~5 KB; each commit rewrites 10 lines of 20 of them (a delta of
    ~400 bytes each: ~9 KB of pack per commit, trees and commit included)."""
    rng = random.Random(42)
    words = [rng.randbytes(4).hex().encode() for _ in range(5000)]
    files = {f"src/f{i:03d}.txt": [b" ".join(rng.choices(words, k=6)) for _ in range(100)]
             for i in range(200)}
    commits = max(2, int(size_mb * MB / 9000))
    for n in range(commits):
        changed = {}
        for path in (sorted(files) if n == 0 else rng.sample(sorted(files), 20)):
            lines = files[path]
            for _ in range(10 if n else 0):
                lines[rng.randrange(len(lines))] = b" ".join(rng.choices(words, k=6))
            changed[path] = b"\n".join(lines) + b"\n"
        yield commit("refs/heads/main", BASE_TIME - (commits - n) * 600, changed, None,
                     f"commit {n}")


def generated(cache: Path, size_mb: float) -> Path:
    path = cache / f"gen{GENERATOR}-{size_mb:g}mb.git"
    if (path / "packed-refs").exists() or (path / "refs" / "heads" / "main").exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(tmp)], check=True)
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=tmp, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for chunk in _history(size_mb):
        proc.stdin.write(chunk)
    proc.stdin.close()
    if proc.wait():
        sys.exit("git fast-import failed")
    subprocess.run(["git", "repack", "-a", "-d", "-f", "-q", "--window=10", "--depth=50"], cwd=tmp,
                   check=True)
    tmp.rename(path)
    return path


def serve(forge: Forge, source: Path) -> str:
    """The source, hard-linked, without refs/pull/*, served as big/big."""
    size_kb = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) // 1024
    forge.add_user("big", [RepoSpec("big", size_kb=size_kb)])
    repo = forge.git_root / "big" / "big.git"
    shutil.rmtree(repo)
    shutil.copytree(source, repo, copy_function=os.link,
                    ignore=shutil.ignore_patterns("packed-refs", "refs", "*.lock"))
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)"],
                          cwd=source, capture_output=True, text=True, check=True).stdout
    kept = [ln for ln in refs.splitlines() if not ln.split(" ", 1)[1].startswith("refs/pull/")]
    (repo / "refs" / "heads").mkdir(parents=True)
    (repo / "refs" / "tags").mkdir()
    (repo / "packed-refs").write_text("# pack-refs with: peeled fully-peeled sorted \n"
                                      + "".join(ln + "\n" for ln in sorted(
                                          kept, key=lambda ln: ln.split(" ", 1)[1])))
    return f"{forge.url}/big/big.git"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall s, cpu s) of ``cmd`` and what it waited for."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} failed: {err.decode(errors='replace')[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, help="a bare repository to serve (default: generated)")
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="run.git_threads for bulkbackup (default 0)")
    ap.add_argument("--vs-threads", type=int, help="a second bulkbackup arm with this "
                    "run.git_threads (1: the behaviour before issue 26)")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--tmp", help="where the stores and clones go (default: the temp dir)")
    args = ap.parse_args()
    source = args.source or generated(args.cache, args.size_mb)
    tmp = Path(tempfile.mkdtemp(prefix="bench-first-", dir=args.tmp))
    try:
        with Forge(tmp / "forge") as forge:
            measure(args, tmp, serve(forge, source), forge.url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path, url: str, api: str) -> None:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GITHUB_", "BULKBACKUP_", "AWS_", "GIT_"))}
    plain_env = {**base, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    plain = ["sh", "-c", 'set -e; git clone --mirror -q "$0" m.git; '
             'git -C m.git bundle create -q ../x.bundle --all; '
             'git -C m.git archive --format=zip -o ../x.zip HEAD', url]
    arms = {"bulkbackup": args.threads or 0}
    if args.vs_threads is not None:
        arms[f"bulkbackup git_threads={args.vs_threads}"] = args.vs_threads
    for threads in arms.values():
        (tmp / f"{threads}.yaml").write_text(f"run:\n  git_threads: {threads}\n")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in [*arms, "plain git"]}
    for n in range(args.rounds):
        work = tmp / f"round{n}"
        (work / "git").mkdir(parents=True)
        for name, threads in arms.items():
            env = {**base, "BULKBACKUP_CONFIG": str(tmp / f"{threads}.yaml"),
                   "GITHUB_API_URL": api, "PYTHONPATH": str(ROOT), "TMPDIR": str(work),
                   "BULKBACKUP_STORE": str(work / f"store{threads}" / "github.com")}
            times[name].append(timed([sys.executable, "-m", "bulkbackup", "sync", "big"], env,
                                     ROOT))
            shutil.rmtree(work / f"store{threads}", ignore_errors=True)
        times["plain git"].append(timed(plain, plain_env, work / "git"))
        print(f"  round {n + 1}: " + " | ".join(
            f"{name} {t[-1][0]:.1f} s wall {t[-1][1]:.1f} s cpu" for name, t in times.items()),
            flush=True)
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: (statistics.median(x[0] for x in t), statistics.median(x[1] for x in t))
               for name, t in times.items()}
    b_wall, b_cpu = medians["plain git"]
    print(f"first archive, {os.cpu_count()} cores, medians of {args.rounds} rounds:")
    for name, (wall, cpu) in medians.items():
        print(f"  {name}: {wall:.1f} s wall, {cpu:.1f} s cpu; ratio plain git/it: wall "
              f"{b_wall / wall:.2f}, cpu {b_cpu / cpu:.2f} (target >= 0.95)")

if __name__ == "__main__":
    main()
