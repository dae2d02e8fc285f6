"""Incremental archives against full ones (`run.max_increments: 0` and
`run.keep_history_days: 0`: the behaviour before increments), side by side in one run.

    python -m benchmarks.increments [--size-mb 200] [--repos 100] [--rounds 3]
                                    [--increments 4] [--keep]

The repositories are generated once with `git fast-import` (random, incompressible blobs of
up to 4 MB rewritten over a few hundred commits, so history dominates the current tree) and
cached in --cache (default /tmp/bulkbackup-bench-increments; --keep leaves them there for the
next run). The stand-in forge serves hard-linked copies; each arm has its own local store.

1. One change: the --size-mb repository synced by both arms, then one 1-commit push, then
   synced again. For that re-sync: the bytes the forge's git endpoints sent, and the bytes
   written to the store (bundles and increments; `%meta` sidecars left out). Counted apart:
   the shallow fetch of a zip's tree, the zips, and the copy of a replaced base to history
   (server-side on S3). Target (DESIGN): incremental <= 5 % of the full archive + 64 KB,
   for both.
2. Re-pass time: --repos repositories of --repo-mb MB, each with one new commit; the time of
   one `bulkbackup sync` of their user, full vs incremental (a ratio > 1: incremental is
   faster; target >= 2), the median of --rounds rounds. Counted too: the bytes of the chains
   read back from the store to prove each increment before it is committed (in place on
   this local store; downloaded on S3).
3. Restore rate: `bulkbackup restore` of the big repository stored as a base and
   --increments increments vs `git clone --mirror` of the full bundle, in bytes of the
   restored repository per second (target: ratio >= 0.8), the median of --rounds rounds.
   Only a big repository makes this meaningful: fixed costs (Python's start, the checks)
   dominate a small one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.repos import BASE_TIME, commit

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "bulkbackup-bench-increments"
KB, MB = 1024, 1024 * 1024
GENERATOR = 2  # bump when the generated content changes: the cache key names it


class BenchError(Exception):
    """A step failed: the message says which and why (one line)."""


# -- the repositories ----------------------------------------------------------------------


def template(cache: Path, size_mb: float, commits: int) -> Path:
    """A bare repository of about ``size_mb`` (packed) built once and cached."""
    path = cache / f"g{GENERATOR}-{size_mb:g}mb-{commits}c.git"
    if (path / "HEAD").exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix="tmp-"))
    print(f"  generating {path.name} ...", file=sys.stderr, flush=True)
    try:
        _run(["git", "init", "--bare", "-q", "--template=", "--initial-branch=main", str(tmp)])
        proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=tmp,
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        for chunk in _history(int(size_mb * MB), commits):
            proc.stdin.write(chunk)
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait():
            raise BenchError(f"git fast-import failed: {err[-300:]}")
        # One pack, as a forge would serve it; random blobs make no deltas anyway.
        _run(["git", "repack", "-a", "-d", "-q", "--window=0"], cwd=tmp)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _history(size: int, commits: int) -> Iterator[bytes]:
    """``commits`` commits on main; spread among them, rewrites of four random blobs that
    add up to ``size``; every commit also adds a small text file."""
    rng = random.Random(size * 1000 + commits)  # deterministic: the cache key says it all
    blob = max(64 * KB, min(4 * MB, size // 50))
    rewrites = max(1, math.ceil(size / blob))
    total = max(commits, rewrites)
    at = {round(j * total / rewrites): j for j in range(rewrites)}
    for i in range(total):
        files = {f"notes/{i:05d}.txt": f"change {i}\n{rng.random()}\n".encode()}
        if i in at:
            files[f"data/blob{at[i] % 4}.bin"] = rng.randbytes(blob)
        yield commit("refs/heads/main", BASE_TIME - (total - i) * 600, files, None,
                     f"commit {i}")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serve(forge: Forge, login: str, names: list[str], source: Path) -> None:
    """List ``names`` for ``login`` and serve a hard-linked copy of ``source`` as each (git
    writes new files and renames, never into existing ones: the links are safe)."""
    kb = math.ceil(du(source) / KB)
    forge.add_user(login, [RepoSpec(n, size_kb=kb) for n in names])

    def place(name: str) -> None:
        repo = forge.git_root / login / f"{name}.git"
        shutil.rmtree(repo)
        try:
            shutil.copytree(source, repo, copy_function=os.link)
        except OSError:  # another file system: copy
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(source, repo)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(place, names))


def push_all(forge: Forge, login: str, names: list[str], tag: str) -> None:
    data = random.Random(tag).randbytes(4 * KB)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: forge.push(login, n, {f"{tag}.bin": data}), names))


# -- the two arms --------------------------------------------------------------------------


@dataclasses.dataclass
class Arm:
    name: str
    store: Path
    env: dict[str, str]


def make_arms(tmp: Path, forge: Forge) -> list[Arm]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GITHUB_", "BULKBACKUP_", "AWS_"))}
    arms = []
    for name, cfg_text in (("full", "run:\n  max_increments: 0\n  keep_history_days: 0\n"),
                           ("incremental", "{}\n")):
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(cfg_text)
        store = tmp / f"store-{name}" / "github.com"
        env = {**base, "BULKBACKUP_CONFIG": str(cfg), "BULKBACKUP_STORE": str(store),
               "GITHUB_API_URL": forge.url, "PYTHONPATH": str(ROOT)}
        arms.append(Arm(name, store, env))
    return arms


def _run(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> float:
    """Run ``cmd``; its wall time. A failure is a BenchError with the end of its stderr."""
    return _run_out(cmd, cwd, env).seconds


@dataclasses.dataclass(frozen=True)
class Ran:
    seconds: float  # wall time
    cpu_s: float  # user + system time of the process and what it waited for (git): this
    # machine's own work, less sensitive than wall time to other load (the forge's is apart)
    stdout: str


def _run_out(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> Ran:
    """Run ``cmd``; its times and stdout. A failure is a BenchError."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    if proc.returncode:
        tail = " | ".join((stderr or stdout).strip().splitlines()[-3:])
        raise BenchError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {tail}")
    return Ran(elapsed, usage.ru_utime + usage.ru_stime, stdout)


def bulkbackup(arm: Arm, *args: str) -> float:
    return _run([sys.executable, "-m", "bulkbackup", *args], env=arm.env)


def _read_back(sync_stdout: str) -> int:
    """The bytes a sync read back from the store to prove its increments (its user lines
    say `N MB read back`)."""
    return sum(int(float(mb) * 1e6) for mb in re.findall(r"([0-9.]+) MB read back",
                                                           sync_stdout))


# -- what a sync wrote ---------------------------------------------------------------------

# path -> (size, inode). Not the mtime: a metadata replace touches it (as S3's copy gives a
# new LastModified) without writing data; the local store writes data only to a new inode.
Snapshot = dict[str, tuple[int, int]]


def snapshot(store: Path) -> Snapshot:
    out = {}
    for p in store.rglob("*") if store.exists() else ():
        if p.is_file() and not p.name.endswith("%meta") and "%incoming" not in p.parts:
            st = p.stat()
            out[str(p.relative_to(store))] = (st.st_size, st.st_ino)
    return out


def written(before: Snapshot, after: Snapshot) -> Counter[str]:
    """Bytes of new or changed files: "bundles" (bases and increments), "zips", "other",
    and "history": a replaced base copied to `<repo>.bundle.d/<chain>/000000.bundle` (a
    file copy in the local store, a server-side copy on S3: nothing uploaded)."""
    out: Counter[str] = Counter()
    for path, st in after.items():
        if before.get(path) == st:
            continue
        kind = ("history" if path.endswith("/000000.bundle") else "zips"
                if path.endswith(".zip") else "bundles" if ".bundle" in path else "other")
        out[kind] += st[0]
    return out


# -- the measurements ----------------------------------------------------------------------


@dataclasses.dataclass
class Pass:
    seconds: float
    git_bytes: int  # history: all but the shallow fetches of zips' trees
    zip_git_bytes: int
    store: Counter[str]
    read_back: int  # the chains read back from the store to prove the increments
    cpu_s: float  # the sync's own CPU time (its git children included, the forge's not)


def sync_pass(forge: Forge, arm: Arm, login: str) -> Pass:
    forge.reset_counters()
    before = snapshot(arm.store)
    ran = _run_out([sys.executable, "-m", "bulkbackup", "sync", login], env=arm.env)
    with forge.lock:
        sent, shallow = forge.counters["git_bytes_sent"], forge.counters["git_bytes_sent_shallow"]
    return Pass(ran.seconds, sent - shallow, shallow, written(before, snapshot(arm.store)),
                _read_back(ran.stdout), ran.cpu_s)


def one_change(forge: Forge, arms: list[Arm], big: Path) -> dict[str, Pass]:
    serve(forge, "big", ["big"], big)
    for arm in arms:
        print(f"  first sync of big/big ({arm.name}) ...", file=sys.stderr, flush=True)
        bulkbackup(arm, "sync", "big")
    push_all(forge, "big", ["big"], "change-1")
    return {arm.name: sync_pass(forge, arm, "big") for arm in arms}


def repass(forge: Forge, arms: list[Arm], small: Path, n: int, rounds: int
           ) -> dict[str, Pass]:
    """``rounds`` rounds of a push to every repository and a sync by each arm (which goes
    first alternates: the machine may be shared); each arm's median round by time."""
    names = [f"r{i:03d}" for i in range(n)]
    serve(forge, "many", names, small)
    for arm in arms:
        print(f"  first sync of many ({n} repos, {arm.name}) ...", file=sys.stderr, flush=True)
        bulkbackup(arm, "sync", "many")
    passes: dict[str, list[Pass]] = {arm.name: [] for arm in arms}
    for k in range(rounds):
        push_all(forge, "many", names, f"change-{k + 1}")
        for arm in arms if k % 2 == 0 else arms[::-1]:
            passes[arm.name].append(sync_pass(forge, arm, "many"))
    print("  re-pass seconds (CPU seconds): " + "; ".join(
        f"{a} " + " ".join(f"{p.seconds:.1f} ({p.cpu_s:.1f})" for p in ps)
        for a, ps in passes.items()), file=sys.stderr, flush=True)
    return {a: sorted(ps, key=lambda p: p.seconds)[len(ps) // 2] for a, ps in passes.items()}


def restore_rates(forge: Forge, arms: list[Arm], tmp: Path, increments: int, rounds: int
                  ) -> dict[str, float]:
    """Bytes of restored repository per second (the median of ``rounds``, the order
    turning): the full arm's bundle by `git clone --mirror` ("full") and by `bulkbackup
    restore` ("full-restore": restore's own costs without increments), the incremental
    arm's chain by `bulkbackup restore`."""
    full, inc = arms
    for k in range(2, increments + 1):  # the first increment is one_change's
        push_all(forge, "big", ["big"], f"change-{k}")
        bulkbackup(inc, "sync", "big")
    chain = [p for p in inc.store.glob("big/big.bundle.d/*/*.bundle")
             if p.name != "000000.bundle"]  # 000000: a history chain's base, not restored
    print(f"  restoring a base and {len(chain)} increments ...", file=sys.stderr, flush=True)
    out = tmp / "restored"

    def ours(arm: Arm) -> Callable[[], float]:
        def restore() -> float:
            seconds = bulkbackup(arm, "restore", "big/big", "--to", str(out))
            return du(out / "big" / "big.git") / seconds
        return restore

    def git_clone() -> float:
        seconds = _run(["git", "clone", "--mirror", "-q",
                        str(full.store / "big" / "big.bundle"), str(out / "big.git")])
        return du(out / "big.git") / seconds

    pairs = [(inc.name, ours(inc)), (full.name, git_clone), ("full-restore", ours(full))]
    rates: dict[str, list[float]] = {name: [] for name, _ in pairs}
    for k in range(rounds):
        for name, measure in pairs if k % 2 == 0 else pairs[::-1]:
            shutil.rmtree(out, ignore_errors=True)
            rates[name].append(measure())
    return {name: sorted(r)[len(r) // 2] for name, r in rates.items()}


# -- the report ----------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / MB:,.2f} MB" if n >= 100 * KB else f"{n / KB:,.1f} KB"


def report(change: dict[str, Pass], again: dict[str, Pass], rates: dict[str, float],
           n: int) -> list[tuple[str, str, str, str, str]]:
    full, inc = change["full"], change["incremental"]
    archive = full.store["bundles"]  # the full archive that the re-sync wrote
    allowed = 0.05 * archive + 64 * KB
    rows = []
    for label, f, i in (("re-sync: git bytes received (history)", full.git_bytes,
                         inc.git_bytes),
                        ("re-sync: bundle/increment bytes stored", archive,
                         inc.store["bundles"])):
        ok = "yes" if i <= allowed else "NO"
        rows.append((label, _mb(f), _mb(i), f"inc/full {i / f:.4f}" if f else "-",
                     f"<= {_mb(allowed)}: {ok}"))
    for label, key in (("git bytes for the zip (apart)", "zip_git"), ("zip bytes stored (apart)",
                       "zips"), ("history copy (server-side on S3)", "history")):
        f, i = (p.zip_git_bytes if key == "zip_git" else p.store[key] for p in (full, inc))
        rows.append((f"re-sync: {label}", _mb(f), _mb(i), "-", "-"))
    rows.append(("re-sync: seconds", f"{full.seconds:.2f}", f"{inc.seconds:.2f}",
                 f"full/inc {full.seconds / inc.seconds:.2f}", "-"))
    fs, is_ = again["full"].seconds, again["incremental"].seconds
    rows.append((f"re-pass of {n} repos, 1 commit each: seconds (median)", f"{fs:.2f}",
                 f"{is_:.2f}", f"full/inc {fs / is_:.2f}",
                 f">= 2: {'yes' if fs >= 2 * is_ else 'NO'}"))
    fc, ic = again["full"].cpu_s, again["incremental"].cpu_s
    rows.append((f"re-pass of {n} repos: CPU seconds of the sync (same round)", f"{fc:.2f}",
                 f"{ic:.2f}", f"full/inc {fc / ic:.2f}", "-"))
    gf, gi = (again[a].git_bytes + again[a].zip_git_bytes for a in ("full", "incremental"))
    rows.append((f"re-pass of {n} repos: git bytes received (all)", _mb(gf), _mb(gi), "-", "-"))
    sf, si = (sum(again[a].store.values()) for a in ("full", "incremental"))
    rows.append((f"re-pass of {n} repos: bytes stored (all)", _mb(sf), _mb(si), "-", "-"))
    rows.append((f"re-pass of {n} repos: read back to prove increments",
                 _mb(again["full"].read_back), _mb(again["incremental"].read_back),
                 "-", "-"))
    fr, ir = rates["full"], rates["incremental"]
    ok = "yes" if ir >= 0.8 * fr else "NO"
    rows.append(("restore: MB/s, full by `git clone --mirror`", f"{fr / MB:.1f}", f"{ir / MB:.1f}",
                 f"inc/full {ir / fr:.2f}", f">= 0.8: {ok}"))
    fr = rates["full-restore"]
    rows.append(("restore: MB/s, both by `bulkbackup restore`", f"{fr / MB:.1f}",
                 f"{ir / MB:.1f}", f"inc/full {ir / fr:.2f}", "-"))
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("measure", "full (baseline)", "incremental", "ratio", "target")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(5)]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                        for c, (cell, w) in enumerate(zip(r, widths, strict=True))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=200, help="the big repository's size")
    ap.add_argument("--commits", type=int, default=300, help="the big repository's commits")
    ap.add_argument("--repos", type=int, default=100, help="repositories of the re-pass")
    ap.add_argument("--repo-mb", type=float, default=2, help="their size each")
    ap.add_argument("--rounds", type=int, default=3,
                    help="re-passes and restores timed (the median)")
    ap.add_argument("--increments", type=int, default=4, help="increments before the restore")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where generated repos are kept")
    ap.add_argument("--keep", action="store_true", help="keep the cache for the next run")
    ap.add_argument("--tmp", help="where the stores and work files go (default: the temp dir)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-increments-", dir=args.tmp))
    step = "generating the repositories"
    try:
        big = template(args.cache, args.size_mb, args.commits)
        big_size = du(big)
        small = template(args.cache, args.repo_mb, 20)
        with Forge(tmp / "forge") as forge:
            arms = make_arms(tmp, forge)
            step = "1. one change"
            change = one_change(forge, arms, big)
            step = "2. re-pass"
            again = repass(forge, arms, small, args.repos, max(1, args.rounds))
            step = "3. restore"
            rates = restore_rates(forge, arms, tmp, max(1, args.increments), max(1, args.rounds))
    except (BenchError, RuntimeError, OSError) as exc:  # RuntimeError: the forge's git
        sys.exit(f"benchmark failed at {step}: {' '.join(str(exc).split())[:500]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.cache, ignore_errors=True)
    print(f"big repository: {_mb(big_size)} packed, "
          f"re-pass repositories: {args.repos} x {args.repo_mb:g} MB")
    print_table(report(change, again, rates, args.repos))


if __name__ == "__main__":
    main()
