"""The Git LFS pointers among a repository's new objects, found with git plumbing alone (no
git-lfs binary): `git rev-list --objects` of the new commits, `git cat-file --batch-check`
for the blobs' sizes, and `git cat-file --batch` of the small blobs only (a pointer is under
1024 bytes: git-lfs's own limit). Each step writes to and reads from files in the scratch
folder, read a line at a time, so memory does not grow with the repository; the pointers kept
are capped (MAX_POINTERS).

A pointer (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md):

    version https://git-lfs.github.com/spec/v1
    oid sha256:<64 hex>
    size <bytes>

Which commits are new is the caller's: a full archive's are all (`--all`), an increment's
the new tips not reachable from the tips already archived (``exclude``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from bulkbackup.git.gitops import run_git_files

MAX_POINTER_BYTES = 1024  # git-lfs ignores a "pointer" this long or longer
MIN_POINTER_BYTES = 90  # version (44) + oid (75) + size lines: anything shorter is not one
MAX_POINTERS = 100_000  # distinct objects kept from one scan; more are left for the next
_VERSION = b"version https://git-lfs.github.com/spec/v1\n"
_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.M)
_SIZE = re.compile(rb"^size ([0-9]{1,19})$", re.M)
_HEX40 = re.compile(r"[0-9a-f]{40}")


def parse_pointer(data: bytes) -> tuple[str, int] | None:
    """(oid, size) of an LFS pointer's content, or None for any other content."""
    if not data.startswith(_VERSION) or len(data) >= MAX_POINTER_BYTES:
        return None
    oid, size = _OID.search(data), _SIZE.search(data)
    if oid is None or size is None:
        return None
    return oid[1].decode(), int(size[1])


def lfs_pointers(repo: Path, include: Iterable[str], exclude: Iterable[str],
                 env: dict[str, str], timeout_s: float, scratch: Path) -> dict[str, int]:
    """The LFS objects (oid -> size) the blobs reachable from ``include`` (object ids, or
    `--all`) and not from ``exclude`` point to, in the bare repository ``repo``; at most
    MAX_POINTERS. ``scratch``: a folder for the steps' files (emptied after)."""
    scratch.mkdir(parents=True, exist_ok=True)
    revs, objects, sizes, small, contents = (scratch / n for n in (
        "revs.txt", "objects.txt", "sizes.txt", "small.txt", "contents.bin"))
    try:
        include = list(include)
        tips = [t for t in include if _HEX40.fullmatch(t)]
        every = "--all" in include
        if not tips and not every:
            return {}
        revs.write_text("".join(f"{t}\n" for t in tips)
                        + "".join(f"^{t}\n" for t in exclude if _HEX40.fullmatch(t)))
        # Blobs of MAX_POINTER_BYTES or more are left out by git itself.
        run_git_files(["rev-list", "--objects", "--no-object-names", "--stdin",
                       *(["--all"] if every else []),
                       f"--filter=blob:limit={MAX_POINTER_BYTES}"],
                      repo, env, timeout_s, revs, objects, what="rev-list (LFS)")
        run_git_files(["cat-file", "--batch-check=%(objecttype) %(objectname) %(objectsize)"],
                      repo, env, timeout_s, objects, sizes, what="cat-file (LFS)")
        if not _small_blobs(sizes, small):
            return {}
        run_git_files(["cat-file", "--batch"], repo, env, timeout_s, small, contents,
                      what="cat-file (LFS)")
        return _pointers(contents)
    finally:
        for path in (revs, objects, sizes, small, contents):
            path.unlink(missing_ok=True)


def _small_blobs(sizes: Path, out: Path) -> int:
    """Writes the ids of the blobs that may be pointers (by size) to ``out``; their number."""
    count = 0
    with sizes.open("rb") as src, out.open("wb") as dst:
        for line in src:
            kind, _, rest = line.partition(b" ")
            oid, _, size = rest.strip().partition(b" ")
            if kind == b"blob" and size.isdigit() and (
                    MIN_POINTER_BYTES <= int(size) < MAX_POINTER_BYTES):
                dst.write(oid + b"\n")
                count += 1
    return count


def _pointers(contents: Path) -> dict[str, int]:
    """`cat-file --batch` output: `<id> <type> <size>\\n<content>\\n` per object."""
    found: dict[str, int] = {}
    with contents.open("rb") as src:
        while len(found) < MAX_POINTERS:
            header = src.readline(256)
            parts = header.split()
            if len(parts) != 3 or not parts[2].isdigit():
                break
            size = int(parts[2])
            if size >= MAX_POINTER_BYTES:
                break  # not what was asked for: stop reading rather than trust it
            data = src.read(size)
            src.read(1)
            pointer = parse_pointer(data)
            if pointer is not None:
                found.setdefault(*pointer)
    return found
