"""The stand-in's repositories: deterministic histories written with `git fast-import`, and
the API entries that describe them."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bulkbackup.testing.lfs import LfsObject, files_with_pointers

BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z: commit dates and default pushed_at
DEFAULT_FILES: dict[str, bytes] = {
    "README.md": b"# Hello\n\nA repository of the GitHub stand-in.\n",
    "src/pkg/main.py": b"print('hello')\n",
    "docs/naïve-ß.txt": "non-ASCII name: naïve ß\n".encode(),
    "bin/blob.dat": bytes(range(256)) * 4,  # NUL bytes included
}
PLACEHOLDER = "forge.invalid"  # host of stored URLs; served as the host the client asked for
NAME = re.compile(r"[A-Za-z0-9_.-]+")
_WHO = b"A U Thor <author@example.com>"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class RepoSpec:
    name: str
    files: dict[str, bytes] | None = None  # default branch content; None: DEFAULT_FILES
    branches: dict[str, dict[str, bytes]] | None = None  # extra branches (on top of `files`)
    tags: Sequence[str] = ()  # each makes annotated tag `T` and lightweight tag `T-light`
    empty: bool = False  # a bare repository without commits (size 0)
    missing: bool = False  # listed, but no repository behind it: clones get 404
    fork: bool = False
    size_kb: int | None = None  # reported `size`; default from the file sizes
    default_branch: str = "main"
    pushed_at: str | None = None  # RFC 3339; default BASE_TIME
    updated_at: str | None = None  # default pushed_at
    stall: bool = False  # POST git-upload-pack sleeps forge.stall_s before answering
    # Each makes GitHub's `refs/pull/<n>/head`: a commit on the default branch's tip, with a
    # file `pull-<n>.txt`, that no branch or tag reaches.
    pulls: Sequence[int] = ()
    # The POST git-upload-pack that sends the pack writes its first bytes, then sleeps
    # forge.stall_s mid-body (a transfer that stalls after it started).
    stall_mid: bool = False
    # A wiki: its pages (a bare `<name>.wiki.git` beside the repository, on `master`, as
    # GitHub's); None: no wiki repository (its info/refs answers 404).
    wiki: dict[str, bytes] | None = None
    # The listing's `has_wiki`; None: whether `wiki` is set (GitHub says true for most
    # repositories whose wiki was never created: has_wiki=True without `wiki` is that).
    has_wiki: bool | None = None
    # Files committed as Git LFS pointers (path -> the object, served by the LFS batch API
    # with its hostile mode: testing/lfs.py), on the default branch beside `files`.
    lfs: dict[str, LfsObject] | None = None


def _quote(path: str) -> bytes:
    raw = path.encode()
    if any(c in raw for c in b'"\\\n') or raw.startswith(b'"'):
        raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n")
        return b'"' + raw + b'"'
    return raw


def commit(ref: str, when: int, files: dict[str, bytes], parent: str | None, msg: str,
            mark: int = 0) -> bytes:
    out = [f"commit {ref}\n".encode(), f"mark :{mark}\n".encode() if mark else b"",
           b"author %s %d +0000\n" % (_WHO, when), b"committer %s %d +0000\n" % (_WHO, when),
           b"data %d\n%s\n" % (len(msg), msg.encode())]
    if parent:
        out.append(f"from {parent}\n".encode())
    for path, data in files.items():
        out.append(b"M 100644 inline %s\ndata %d\n%s\n" % (_quote(path), len(data), data))
    return b"".join(out) + b"\n"


def fast_import_stream(spec: RepoSpec) -> bytes:
    """Deterministic history: the default branch, extra branches, both kinds of tags."""
    if spec.empty:
        return b""
    files = files_with_pointers(DEFAULT_FILES if spec.files is None else spec.files,
                                spec.lfs or {})
    out = [commit(f"refs/heads/{spec.default_branch}", BASE_TIME, files, None, "initial", 1)]
    for i, (branch, extra) in enumerate((spec.branches or {}).items()):
        out.append(commit(f"refs/heads/{branch}", BASE_TIME + i + 1, extra, ":1", branch))
    for n in spec.pulls:
        out.append(commit(f"refs/pull/{int(n)}/head", BASE_TIME + 100 + int(n),
                           {f"pull-{int(n)}.txt": f"pull request {int(n)}\n".encode()}, ":1",
                           f"pull request {int(n)}"))
    for tag in spec.tags:
        msg = f"release {tag}\n".encode()
        out.append(f"reset refs/tags/{tag}-light\nfrom :1\n\n".encode())
        out.append(b"tag %s\nfrom :1\ntagger %s %d +0000\ndata %d\n%s\n"
                   % (tag.encode(), _WHO, BASE_TIME, len(msg), msg))
    return b"".join(out)


def git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, input=data, check=False, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def digits(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:7], 16)
