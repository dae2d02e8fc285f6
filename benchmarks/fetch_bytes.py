"""What an increment's fetch and its zip's fetch download from a repository with many refs
(issue 26.2/26.3): bytes the stand-in's git endpoints sent, ref listings counted apart.

    python -m benchmarks.fetch_bytes [--tags 20000] [--pulls 17000] [--tree-kb 1024]

One repository: a --tree-kb tree of random files, --tags annotated tags on its history (as
releases: v0 advertises each with its peeled line) and --pulls GitHub refs/pull/<n>/head.
It is archived in full (the base), gets one push, then:

- the increment (bulkbackup.git.packfetch): protocol v2 (`ls-refs` of refs/heads/ and
  refs/tags/), and against the stand-in switched to v0 only (`forge.git_v2` off: the whole
  advertisement, as every increment fetched before v2);
- the zip of the new tip: made from the increment's proof repository now (no fetch), against
  the depth-1 fetch with tags followed it cost before.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bulkbackup.config import RunSettings
from bulkbackup.git.auth import ANONYMOUS
from bulkbackup.git.gitops import GitWork, git_env, run_git
from bulkbackup.git.packfetch import fetch_increment
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.repos import git

RUN = RunSettings(git_timeout_s=600)


def add_refs(repo: Path, tags: int, pulls: int) -> None:
    """``tags`` annotated tags on the default branch's commits (fast-import) and ``pulls``
    refs/pull/<n>/head written into packed-refs (update-ref makes ~170 refs/s)."""
    tip = git("rev-parse", "refs/heads/main", cwd=repo).strip()
    stream = b"".join(b"tag v%05d\nfrom %s\ntagger T <t@example.com> 1500000000 +0000\n"
                      b"data 8\nrelease\n\n" % (i, tip.encode()) for i in range(tags))
    git("fast-import", "--quiet", cwd=repo, data=stream)
    git("pack-refs", "--all", cwd=repo)
    header, *lines = (repo / "packed-refs").read_text().splitlines(keepends=True)
    entries: list[tuple[str, str]] = []
    for line in lines:
        if line.startswith("^"):
            entries[-1] = (entries[-1][0], entries[-1][1] + line)
        else:
            entries.append((line.split()[1], line))
    entries += [(f"refs/pull/{i}/head", f"{tip} refs/pull/{i}/head\n") for i in range(pulls)]
    (repo / "packed-refs").write_text(header + "".join(b for _, b in sorted(entries)))


def sent(forge: Forge) -> tuple[int, int, int]:
    """(all git bytes, ref listing bytes, shallow fetch bytes) since the last reset."""
    with forge.lock:
        c = forge.counters
        return c["git_bytes_sent"], c["git_bytes_sent_refs"], c["git_bytes_sent_shallow"]


def old_state(bundle: Path) -> dict[str, str]:
    out = git("bundle", "list-heads", str(bundle), cwd=bundle.parent)
    return {ref: sha for sha, ref in (line.split() for line in out.splitlines())}


def zip_with_tags(forge: Forge, work: Path, url: str, commit: str) -> None:
    """The zip's fetch as it was: depth 1, tags followed."""
    shallow = work / "before.git"
    env = git_env(work, None, RUN)
    run_git(["init", "--bare", "--quiet", "--template=", str(shallow)], work, env, 60)
    run_git(["fetch", "--quiet", "--depth=1", "--no-write-fetch-head", "--", url,
             f"{commit}:refs/zip"], shallow, env, 600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tags", type=int, default=20_000)
    ap.add_argument("--pulls", type=int, default=17_000)
    ap.add_argument("--tree-kb", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fetch-bytes-") as tmp, \
            Forge(Path(tmp) / "forge") as forge:
        files = {f"f{i}.bin": os.urandom(16 << 10) for i in range(max(1, args.tree_kb // 16))}
        forge.add_user("u", [RepoSpec("big", files=files)])
        repo = forge.git_root / "u" / "big.git"
        start = time.monotonic()
        add_refs(repo, args.tags, args.pulls)
        print(f"repository: {args.tags} annotated tags, {args.pulls} pull refs, "
              f"{len(files) * 16} KB tree (refs made in {time.monotonic() - start:.1f}s)")
        url = f"{forge.url}/u/big.git"
        work = GitWork(RUN, Path(tmp) / "work")
        base = work.archive("u", "big", url, "main", ANONYMOUS)
        assert base.bundle is not None
        old = old_state(base.bundle)
        forge.push("u", "big", {"new.txt": os.urandom(4096)})
        tip = git("rev-parse", "refs/heads/main", cwd=repo).strip()
        print("\nincrement (one push)       total B   listing B    pack B")
        for label, v2 in (("protocol v2 (now)", True), ("v0 server (as before)", False)):
            forge.git_v2 = v2
            forge.reset_counters()
            inc = fetch_increment(url, old, "main", Path(tmp) / f"{v2}.bundle", RUN, ANONYMOUS)
            total, listing, _ = sent(forge)
            print(f"  {label:<22} {total:>10,} {listing:>11,} {inc.received_bytes:>9,}")
        print("\nzip of the new tip          total B   listing B    tree B")
        # Now: made from the repository the increment's proof built (archive/writer.py): 0 bytes.
        print(f"  {'from the proof (now)':<26} {0:>10,} {0:>11,} {0:>9,}")
        forge.git_v2 = True
        forge.reset_counters()
        zip_with_tags(forge, Path(tmp), url, tip)
        total, listing, tree = sent(forge)
        print(f"  {'depth-1 fetch (before)':<26} {total:>10,} {listing:>11,} {tree:>9,}")

if __name__ == "__main__":
    main()
