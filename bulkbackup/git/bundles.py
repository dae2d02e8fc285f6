"""Git bundle headers: read from a file or straight from the store (the first bytes of an
object), so the tips of a stored archive are known without downloading it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from bulkbackup.errors import ArchiveError, NotFound

MAX_BUNDLE_HEADER_BYTES = 64 << 20
_SHA = re.compile(rb"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")


@dataclass(frozen=True)
class BundleHeader:
    prerequisites: tuple[str, ...]
    refs: dict[str, str]  # ref name -> object id, HEAD excluded
    head: str | None  # the object id of HEAD when the bundle records it


def parse_header(f: BinaryIO, key: str, need_pack: bool = True) -> BundleHeader:
    """Parse a bundle's header (v2/v3) from the start of ``f``; a bundle cut short names
    itself truncated. ``need_pack``: the pack's signature must follow the header."""
    prereqs: list[str] = []
    refs: dict[str, str] = {}
    head: str | None = None
    if f.readline(64) not in _SIGNATURES:
        raise ArchiveError(f"{key}: not a git bundle")
    read = 0
    while True:
        line = f.readline(MAX_BUNDLE_HEADER_BYTES - read + 1)
        read += len(line)
        if read > MAX_BUNDLE_HEADER_BYTES:
            raise ArchiveError(f"{key}: bundle header above {MAX_BUNDLE_HEADER_BYTES} bytes")
        if not line.endswith(b"\n"):
            raise ArchiveError(f"{key}: bundle truncated in its header")
        if line == b"\n":
            break
        if line.startswith(b"@"):
            continue  # v3 capabilities
        sha, _, rest = line[:-1].lstrip(b"-").partition(b" ")
        if not _SHA.fullmatch(sha):
            raise ArchiveError(f"{key}: corrupt bundle header line {line[:80]!r}")
        if line.startswith(b"-"):
            prereqs.append(sha.decode())
        elif rest == b"HEAD":
            head = sha.decode()
        else:
            refs[rest.decode("utf-8", "replace")] = sha.decode()
    if need_pack and f.read(4) != b"PACK":
        raise ArchiveError(f"{key}: bundle truncated: no pack data after the header")
    return BundleHeader(tuple(prereqs), refs, head)


def read_header(path: Path, key: str) -> BundleHeader:
    with path.open("rb") as f:
        return parse_header(f, key)


class Opener(Protocol):
    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO: ...


def stored_header(store: Opener, key: str) -> BundleHeader:
    """The header of the stored bundle ``key``, read with one ranged GET that stops at the
    header's end (the pack is not downloaded)."""
    try:
        with store.open(key, 0, MAX_BUNDLE_HEADER_BYTES + 64) as f:
            return parse_header(f, key)
    except NotFound:
        raise ArchiveError(f"missing object {key}") from None


def write_header(out: BinaryIO, prerequisites: list[str], refs: dict[str, str],
                 head: str | None) -> None:
    """A v2 header: prerequisites, refs (sorted), HEAD, then the blank line."""
    out.write(_SIGNATURES[0])
    for sha in prerequisites:
        out.write(f"-{sha}\n".encode())
    for name in sorted(refs):
        out.write(f"{refs[name]} {name}\n".encode())
    if head:
        out.write(f"{head} HEAD\n".encode())
    out.write(b"\n")
