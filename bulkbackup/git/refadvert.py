"""The remote's refs for an increment's fetch, read while they stream and bounded.

Protocol v2 (GitHub's): `GET info/refs` with `Git-Protocol: version=2` answers a few
capability lines; then one `ls-refs` POST names the ref prefixes wanted (HEAD, refs/heads/,
refs/tags/, and refs/pull/ only with run.pull_refs), so GitHub's tens of thousands of
refs/pull/* never cross the wire, and no peeled `^{}` lines are asked for. A server without
v2 answers the same GET with protocol v0's full advertisement: it is read the same way and
the refs outside the prefixes are dropped as they arrive, so both give the same refs.

Every ref line is parsed as it arrives: past MAX_REFS refs (or the byte cap of the answer,
packhttp) the fetch is refused at once, so memory grows with the refs kept, up to the cap,
never with the whole answer (a listing of 1 M refs used to be held whole, then parsed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bulkbackup.errors import GitError

MAX_REFS = 500_000  # GitHub's biggest repositories: a few hundred thousand refs/pull/*
_MAX_PREFIXES = 64  # more namespaces than this in the old state: ask for all of refs/
_OID = re.compile(rb"[0-9a-f]{40}")
# What `git check-ref-format` refuses, roughly; a name that passes is safe in a bundle header.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(?:/|$)|[/.]$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_FLUSH, _DELIM = b"0000", b"0001"
_NOT_GIT = "git fetch failed: the server's answer is not git's protocol"


def pkt(line: bytes) -> bytes:
    return b"%04x%s" % (len(line) + 4, line)


class Pkts:
    """pkt-lines from ``read`` (exact sizes): a line's payload, or None at a flush packet."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read

    def next(self) -> bytes | None:
        size = self.read(4)
        if len(size) < 4:
            raise GitError("git fetch failed: the ref listing ended early")
        if size in (_FLUSH, _DELIM, b"0002"):
            return None
        try:
            n = int(size, 16)
        except ValueError:
            raise GitError(_NOT_GIT) from None
        if not 4 < n <= 65520:
            raise GitError(_NOT_GIT)
        line = self.read(n - 4)
        if len(line) < n - 4:
            raise GitError("git fetch failed: the ref listing ended early")
        if line.startswith(b"ERR "):
            said = re.sub(r"[^ -~]", "?", line[4:].decode("utf-8", "replace").strip())[:200]
            raise GitError(f"git fetch failed: the server said: {said}")
        return line


def end(read: Callable[[int], bytes]) -> None:
    """The answer ends after its last packet (and its connection can serve the next one)."""
    if read(1):
        raise GitError(_NOT_GIT + " (data after the ref listing)")


def ref_prefixes(old_refs: Iterable[str], pull_refs: bool) -> tuple[str, ...]:
    """What an increment asks for: branches and tags, GitHub's pull refs with run.pull_refs,
    and any other namespace the archived state has (`refs/notes/`, ...), so an increment
    never drops a ref its base holds (restore applies parts with `--prune`). A namespace
    that first appears after the base waits for the next full archive."""
    known = ("refs/heads/", "refs/tags/", "refs/pull/")
    other = {n[: n.index("/", 5) + 1] if "/" in n[5:] else n for n in old_refs
             if n.startswith("refs/") and not n.startswith(known) and len(n) <= 1024
             and not _CONTROL.search(n)}  # each goes on a pkt-line of its own
    if len(other) > _MAX_PREFIXES:
        return ("refs/",)  # pull refs are still dropped as they arrive unless asked for
    return ("refs/heads/", "refs/tags/", *(("refs/pull/",) if pull_refs else ()), *sorted(other))


@dataclass(frozen=True)
class Advert:
    refs: dict[str, str]  # the advertised refs under the prefixes asked for, checked
    head_target: str | None  # what the remote HEAD points to
    capabilities: set[bytes]  # for dulwich: v0's from the first line, v2's advertised
    version: int  # 0 or 2


class _Kept:
    """The refs kept so far, counted and checked as each arrives."""

    def __init__(self, prefixes: tuple[str, ...], pull_refs: bool) -> None:
        self.prefixes = tuple(p.encode() for p in prefixes)
        # With ("refs/",) asked for (see ref_prefixes), pull refs still stay out unless asked.
        self.skip = () if pull_refs else (b"refs/pull/",)
        self.count = 0
        self.refs: dict[str, str] = {}

    def add(self, oid: bytes, name: bytes) -> None:
        if name.endswith(b"^{}"):
            return  # v0's peeled tags: not a ref
        self.count += 1
        if self.count > MAX_REFS:
            raise GitError(f"git fetch refused: the server advertises more than {MAX_REFS} refs")
        if not name.startswith(self.prefixes) or name.startswith(self.skip):
            return
        if not _OID.fullmatch(oid):
            raise GitError("git fetch failed: the server advertised a malformed object id")
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise GitError("git fetch failed: the server advertised a ref that is not UTF-8"
                           ) from None
        if len(text) > 1024 or _BAD_REF.search(text):
            raise GitError("git fetch failed: the server advertised an invalid ref name")
        self.refs[text] = oid.decode()


def read_info_refs(pkts: Pkts, prefixes: tuple[str, ...], pull_refs: bool
                   ) -> Advert | set[bytes]:
    """The `GET info/refs` answer: v0's advertisement, read whole (an Advert), or v2's
    capabilities (then ls-refs follows)."""
    line = pkts.next()
    if line == b"# service=git-upload-pack\n":  # v0, or v2 after it (GitHub)
        if pkts.next() is not None:
            raise GitError(_NOT_GIT)
        line = pkts.next()
    elif line != b"version 2\n":  # v2 as git http-backend sends it
        raise GitError(_NOT_GIT)
    if line == b"version 2\n":
        caps: set[bytes] = set()
        while (cap := pkts.next()) is not None:
            caps.add(cap.rstrip(b"\n"))
        if not {c.split(b"=")[0] for c in caps} >= {b"ls-refs", b"fetch"}:
            raise GitError("git fetch failed: a protocol v2 server without ls-refs or fetch")
        return caps
    kept = _Kept(prefixes, pull_refs)
    if line is None:  # no refs, no capabilities
        return Advert({}, None, set(), 0)
    first, _, caps_text = line.rstrip(b"\n").partition(b"\0")
    caps = set(caps_text.split())
    head = next((c[len(b"symref=HEAD:"):] for c in caps if c.startswith(b"symref=HEAD:")), None)
    oid, _, name = first.partition(b" ")
    if name != b"capabilities^{}":  # an empty repository's placeholder
        kept.add(oid, name)
    while (line := pkts.next()) is not None:
        oid, _, name = line.rstrip(b"\n").partition(b" ")
        kept.add(oid, name)
    return Advert(kept.refs, _target(head), caps, 0)


def ls_refs_request(caps: set[bytes], prefixes: tuple[str, ...], agent: bytes) -> bytes:
    """The v2 `ls-refs` command: HEAD's target and the refs under ``prefixes``, unpeeled."""
    head = [pkt(b"command=ls-refs\n"), pkt(b"agent=" + agent + b"\n")]
    head += [pkt(c + b"\n") for c in caps if c.startswith(b"object-format=")]
    args = [pkt(b"symrefs\n"), pkt(b"ref-prefix HEAD\n"),
            *(pkt(b"ref-prefix %s\n" % p.encode()) for p in prefixes)]
    return b"".join([*head, _DELIM, *args, _FLUSH])


def read_ls_refs(pkts: Pkts, prefixes: tuple[str, ...], pull_refs: bool,
                 caps: set[bytes]) -> Advert:
    """The `ls-refs` answer: `<id> <name>[ symref-target:<ref>]` lines, then a flush. A
    server that ignores the prefixes gets its other refs dropped all the same."""
    kept, head = _Kept(prefixes, pull_refs), None
    while (line := pkts.next()) is not None:
        oid, _, rest = line.rstrip(b"\n").partition(b" ")
        name, *attrs = rest.split(b" ")
        if name == b"HEAD":
            head = next((a[len(b"symref-target:"):] for a in attrs
                         if a.startswith(b"symref-target:")), None)
            kept.count += 1
            continue
        kept.add(oid, name)
    return Advert(kept.refs, _target(head), caps, 2)


def _target(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw else None
