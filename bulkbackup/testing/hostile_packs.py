"""Wrong answers of a git server to an increment fetch, written as raw pack bytes (object
headers, zlib, REF_DELTA, the trailer's SHA-1), for the tests of the increment's proof
(tests/test_increment_proof.py). Each answer is a function of the served repository, the
ids the client wants and the ids it has; `forge.set_pack_answer` installs one for a
repository, and `answer_with` puts its pack in place of the real one in git's reply."""

from __future__ import annotations

import hashlib
import re
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

COMMIT, TREE, BLOB, TAG, REF_DELTA = 1, 2, 3, 4, 7
_KINDS = {"commit": COMMIT, "tree": TREE, "blob": BLOB, "tag": TAG}
_OID = re.compile(rb"(want|have) ([0-9a-f]{40})")

#: (served repository, wanted ids, had ids) -> the pack to answer with.
PackAnswer = Callable[[Path, list[str], list[str]], bytes]


@dataclass(frozen=True)
class Entry:
    """One pack entry: ``data`` deflated under a header of ``kind`` and ``size`` (default
    the data's length); a REF_DELTA names its ``base`` id."""

    kind: int
    data: bytes
    oid: str = ""  # the object's id, when it is a whole object (for filters)
    size: int | None = None
    base: str | None = None


def pack(entries: list[Entry], junk: bytes = b"") -> bytes:
    """A v2 pack of ``entries``, then ``junk``, then the SHA-1 of all of it."""
    out = bytearray(b"PACK" + (2).to_bytes(4, "big") + len(entries).to_bytes(4, "big"))
    for e in entries:
        size = len(e.data) if e.size is None else e.size
        byte = (e.kind << 4) | (size & 0x0F)
        size >>= 4
        while size:
            out.append(byte | 0x80)
            byte, size = size & 0x7F, size >> 7
        out.append(byte)
        if e.base is not None:
            out += bytes.fromhex(e.base)
        out += zlib.compress(e.data)
    out += junk
    return bytes(out + hashlib.sha1(out, usedforsecurity=False).digest())


def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True,
                          check=True, timeout=60).stdout


def sane(repo: Path, wants: list[str], haves: list[str]) -> list[Entry]:
    """What a correct server sends (undeltified): every object reachable from ``wants`` and
    not from ``haves``."""
    listed = _git(repo, "rev-list", "--objects", "--stdin",
                  data="".join([*(f"{w}\n" for w in wants), *(f"^{h}\n" for h in haves)]
                               ).encode())
    oids = [line.split()[0].decode() for line in listed.splitlines() if line.strip()]
    if not oids:
        return []
    out = _git(repo, "cat-file", "--batch", data="".join(f"{o}\n" for o in oids).encode())
    entries, pos = [], 0
    for oid in oids:
        end = out.index(b"\n", pos)
        _, kind, size = out[pos:end].split()
        data = out[end + 1 : end + 1 + int(size)]
        pos = end + 2 + int(size)
        entries.append(Entry(_KINDS[kind.decode()], data, oid))
    return entries


def no_objects(repo: Path, wants: list[str], haves: list[str]) -> bytes:
    return pack([])


def delta_past_base(repo: Path, wants: list[str], haves: list[str]) -> bytes:
    """The right objects and a REF_DELTA on an object the client has, whose copy reads past
    the end of that base."""
    base = haves[0]
    base_size = int(_git(repo, "cat-file", "-s", base))
    delta = _varint(base_size) + _varint(16)
    delta += bytes([0x80 | 0x0F | 0x10]) + base_size.to_bytes(4, "little") + bytes([16])
    return pack([*sane(repo, wants, haves), Entry(REF_DELTA, delta, base=base)])


def huge_blob(repo: Path, wants: list[str], haves: list[str]) -> bytes:
    """The right objects and a blob whose header claims 2^60 bytes."""
    return pack([*sane(repo, wants, haves), Entry(BLOB, b"not that big\n", size=1 << 60)])


def other_objects(repo: Path, wants: list[str], haves: list[str]) -> bytes:
    """Well-formed objects, none of them wanted."""
    return pack([Entry(BLOB, b"not what was asked for\n"), Entry(BLOB, b"nor this\n")])


def trailing_junk(repo: Path, wants: list[str], haves: list[str]) -> bytes:
    """The right objects, junk after the last one, the trailer recomputed over it all."""
    return pack(sane(repo, wants, haves), junk=b"\x00junk" * 16)


def without(oids: set[str]) -> PackAnswer:
    """The right objects except ``oids`` (a tag's tree that is never sent)."""
    def answer(repo: Path, wants: list[str], haves: list[str]) -> bytes:
        return pack([e for e in sane(repo, wants, haves) if e.oid not in oids])
    return answer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def wants_and_haves(body: bytes) -> tuple[list[str], list[str]]:
    """The ids of an upload-pack request's `want` and `have` lines."""
    wants: list[str] = []
    haves: list[str] = []
    for kind, oid in _OID.findall(body):
        (wants if kind == b"want" else haves).append(oid.decode())
    return wants, haves


def answer_with(reply: bytes, new_pack: bytes) -> bytes:
    """git's upload-pack reply body ``reply`` (pkt-lines: ACK/NAK, then the pack on
    side-band 1, or raw) with ``new_pack`` in place of its pack."""
    pos = 0
    while pos + 4 <= len(reply):
        if reply[pos : pos + 4] == b"PACK":  # no side-band: the pack follows as it is
            return reply[:pos] + new_pack
        length = int(reply[pos : pos + 4], 16)
        if length > 4 and reply[pos + 4 : pos + 9] == b"\x01PACK":
            chunks = [new_pack[i : i + 65515] for i in range(0, len(new_pack), 65515)]
            framed = b"".join(b"%04x\x01%s" % (len(c) + 5, c) for c in chunks)
            return reply[:pos] + framed + b"0000"
        pos += max(length, 4)
    raise ValueError("no pack in the upload-pack reply")
