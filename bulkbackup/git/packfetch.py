"""Fetch what is new in a remote repository since a known state, as an increment bundle.

No local repository: the previous state is only its refs. The remote's refs under the
prefixes kept (refadvert.py: protocol v2's `ls-refs`, GitHub's refs/pull/* left out; v0's
whole advertisement from a server without v2), then, if a kept ref points to an id the old
state lacks, one POST that wants those ids and has every old id, answered with a thin pack.
The bundle: `# v2 git bundle`, `-<id>` per old branch tip, the kept refs and HEAD, a blank
line, the pack as it arrived. This module plans the fetch (which refs, wants and haves) and
writes the bundle; the HTTP under dulwich, with its bounds and the token's scope, is in
packhttp.py.

Prerequisites are old branch tips only: a branch always points to a commit (git refuses
anything else), but a tag's peeled object may be a tree or a blob (git.git's junio-gpg-pub tag
points to a blob) and `git bundle verify` refuses a prerequisite that is not a commit. The thin
pack may still take delta bases reachable only from old tags: `git fetch` from a bundle runs
`index-pack --fix-thin`, which finds them in the repository the earlier parts were applied to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import urllib3

from bulkbackup.config import RunSettings
from bulkbackup.errors import BulkbackupError, GitError, RemoteNotFound
from bulkbackup.git.auth import GitAuth
from bulkbackup.git.packhttp import Client, Http, base_url
from bulkbackup.git.refadvert import Advert, ref_prefixes
from bulkbackup.http.bounded import Overdue, SlowRead, TooLarge

_CHECK_EVERY = 4 << 20  # pack bytes between two calls of check()
_OID = re.compile(r"[0-9a-f]{40}")
_PACK_HEAD = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00"
EMPTY_PACK = _PACK_HEAD + hashlib.sha1(_PACK_HEAD, usedforsecurity=False).digest()


@dataclass(frozen=True)
class FetchedIncrement:
    # The increment bundle written at `dest`; None when the remote refs equal old_refs and
    # HEAD is unchanged (nothing to store), or when the remote has no refs to keep.
    bundle: Path | None
    refs: dict[str, str]  # remote refs kept: name -> id; no HEAD, no `^{}`, refs/pull/* per run
    head: str | None  # id of `branch` (the bundle's HEAD line); None without branches
    branch: str | None  # default_branch if a branch, else the remote HEAD's branch, else first
    received_bytes: int  # pack bytes received (0 when no pack was requested)


def pack_limit(run: RunSettings) -> int:
    """The most pack bytes one fetch takes: twice run.max_repo_kb, plus 1 MiB. GitHub's `size`
    (held against max_repo_kb before a fetch) is approximate and lags pushes, and a pack made
    for one fetch (a rewritten history) can be packed less tightly than the server's own; the
    MiB is for tiny repositories. A server that sends without end still stops here."""
    return 2 * run.max_repo_kb * 1024 + (1 << 20)


def fetch_increment(clone_url: str, old_refs: dict[str, str], default_branch: str | None,
                    dest: Path, run: RunSettings, auth: GitAuth,
                    check: Callable[[], None] = lambda: None) -> FetchedIncrement:
    """Fetch what ``clone_url`` has beyond ``old_refs`` and write it as a bundle at ``dest``.

    ``old_refs`` is the previous state (name -> id); it may hold `HEAD` (as `git bundle
    list-heads` gives it): then a different head alone makes an increment. ``check`` runs
    between steps and every few MB of pack; what it raises is raised as it is, with ``dest``
    absent. Every other failure is a GitError; on failure ``dest`` is absent. ``auth``: the
    token, if any, and the one host it may go to (the forge's `GitAuth`).
    """
    dest.unlink(missing_ok=True)
    base = base_url(clone_url)
    old, old_head = _old_state(old_refs)
    http = Http(base, auth.authorization(base), run, pack_limit(run))
    guard = _Guard(check)
    writer = _Writer(dest, pack_limit(run), guard)
    steps = _Steps(writer, guard, lambda advert: _plan(advert, old, old_head, default_branch))
    client = Client(base, http, ref_prefixes(old, run.pull_refs), run.pull_refs,
                    steps.discovered, steps.want)
    try:
        with http:
            client.fetch_pack("", client.wants, client.haves, writer.pack)
        plan = steps.plan
        assert plan is not None  # made by client.wants, which fetch_pack always calls
        if plan.unchanged:
            return FetchedIncrement(None, plan.refs, plan.head, plan.branch, 0)
        if not plan.wants:  # refs deleted, moved to ids already had, or only HEAD moved
            writer.start(plan.header)
            writer.pack(EMPTY_PACK)
        guard()
        writer.finish()
        received = writer.size if plan.wants else 0
        return FetchedIncrement(dest, plan.refs, plan.head, plan.branch, received)
    except BulkbackupError:
        raise
    except Exception as exc:
        if exc is guard.raised:
            raise
        raise http.failure(exc) from None
    finally:
        writer.discard()



class _Guard:
    """Calls ``check``, remembering what it raised: that is raised as it is, not a GitError."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self.raised: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.check()
        except BaseException as exc:
            self.raised = exc
            raise


def _old_state(old_refs: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """(refs without HEAD and peeled entries, HEAD's id or None), ids checked."""
    old: dict[str, str] = {}
    head = None
    for name, oid in old_refs.items():
        if not _OID.fullmatch(oid):
            raise GitError("git fetch refused: the previous state has a malformed object id")
        if name == "HEAD":
            head = oid
        elif not name.endswith("^{}"):
            old[name] = oid
    return old, head


@dataclass(frozen=True)
class _Plan:
    refs: dict[str, str]
    head: str | None
    branch: str | None
    wants: list[str]
    haves: list[str]
    header: bytes
    unchanged: bool  # nothing to store


def _plan(advert: Advert, old: dict[str, str], old_head: str | None,
          default_branch: str | None) -> _Plan:
    refs = advert.refs  # refs/pull/* only with run.pull_refs (refadvert)
    heads = sorted(n.removeprefix("refs/heads/") for n in refs if n.startswith("refs/heads/"))
    target = advert.head_target or ""
    branch = (default_branch if default_branch is not None and default_branch in heads
              else target.removeprefix("refs/heads/") if target.startswith("refs/heads/")
              and target in refs else heads[0] if heads else None)
    head = refs[f"refs/heads/{branch}"] if branch is not None else None
    known = {*old.values(), *([old_head] if old_head else [])}
    unchanged = not refs or (refs == old and old_head in (None, head))
    # dulwich sends at most 256 haves in its one stateless request (client.MAX_IN_VAIN): the
    # likeliest bases first, the old tips of the refs that moved, then HEAD and the branches.
    moved = [old[n] for n in sorted(old) if refs.get(n) != old[n]]
    tips = [old[n] for n in sorted(old) if n.startswith("refs/heads/")]
    haves = list(dict.fromkeys([*moved, *([old_head] if old_head else []), *tips,
                                *(old[n] for n in sorted(old))]))
    prerequisites = sorted(set(tips))
    lines = ["# v2 git bundle\n", *(f"-{p}\n" for p in prerequisites),
             *(f"{refs[n]} {n}\n" for n in sorted(refs)), f"{head} HEAD\n" if head else "", "\n"]
    return _Plan(refs, head, branch, sorted(set(refs.values()) - known), haves,
                 "".join(lines).encode(), unchanged)




class _Steps:
    """What the fetch learns between dulwich's calls: the advertisement at discovery, then the
    plan when dulwich asks for the wants, starting the bundle when a pack will come."""

    def __init__(self, writer: _Writer, guard: _Guard,
                 planner: Callable[[Advert], _Plan]) -> None:
        self._writer, self._guard, self._planner = writer, guard, planner
        self.advert: Advert | None = None
        self.plan: _Plan | None = None

    def discovered(self, advert: Advert) -> None:
        self.advert = advert

    def want(self) -> tuple[list[str], list[str]]:
        self._guard()
        assert self.advert is not None  # discovery came first
        self.plan = self._planner(self.advert)
        if self.plan.wants:
            self._writer.start(self.plan.header)
        return self.plan.wants, self.plan.haves


class _Writer:
    """The bundle, written to a temp file beside ``dest`` (header, then the pack as it
    arrives: constant memory) and renamed to ``dest`` once the pack's checksum holds."""

    def __init__(self, dest: Path, cap: int, check: Callable[[], None]) -> None:
        self.dest, self.cap, self.check = dest, cap, check
        self.tmp: Path | None = None
        self.file: IO[bytes] | None = None
        self.size, self.next_check = 0, _CHECK_EVERY
        self.sha = hashlib.sha1(usedforsecurity=False)
        self.head, self.tail = b"", b""

    def start(self, header: bytes) -> None:
        fd, name = tempfile.mkstemp(dir=self.dest.parent, prefix=f".{self.dest.name}.",
                                    suffix=".tmp")
        self.tmp, self.file = Path(name), os.fdopen(fd, "wb")
        self.file.write(header)

    def pack(self, data: bytes) -> int:
        if self.file is None:
            raise GitError("git fetch failed: pack data that was not asked for")
        self.size += len(data)
        if self.size > self.cap:
            raise GitError(f"git fetch refused: the pack is larger than {self.cap} bytes "
                           "(2 x run.max_repo_kb + 1 MiB)")
        if len(self.head) < 12:
            self.head += data[: 12 - len(self.head)]
            if len(self.head) == 12 and (self.head[:4] != b"PACK" or self.head[4:8] not in (
                    b"\x00\x00\x00\x02", b"\x00\x00\x00\x03")):
                raise GitError("git fetch failed: the server sent something that is not a pack")
        buf = self.tail + data
        self.sha.update(buf[:-20])  # all but the last 20 bytes, the trailer
        self.tail = buf[-20:]
        self.file.write(data)
        if self.size >= self.next_check:
            self.next_check += _CHECK_EVERY
            self.check()
        return len(data)

    def finish(self) -> None:
        assert self.file is not None and self.tmp is not None
        if self.size < len(EMPTY_PACK) or self.tail != self.sha.digest():
            raise GitError("git fetch failed: the pack is truncated (bad checksum)")
        self.file.close()
        os.replace(self.tmp, self.dest)
        self.tmp = None

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def remote_refs(clone_url: str, run: RunSettings, auth: GitAuth) -> Advert | None:
    """The refs (branches and tags) ``clone_url`` advertises, nothing fetched: one ref listing
    (v0: one request; v2: its capabilities and one ls-refs). None when the host answers 404
    (a wiki never created). Other failures are GitErrors."""
    base = base_url(clone_url)
    http = Http(base, auth.authorization(base), run, 0)
    client = Client(base, http, ref_prefixes({}, False), False, lambda advert: None,
                    lambda: ([], []))
    try:
        with http:
            return client.discover()
    except RemoteNotFound:
        return None
    except BulkbackupError:
        raise
    except (Overdue, SlowRead, TooLarge, urllib3.exceptions.HTTPError, OSError,
            ValueError) as exc:
        raise http.failure(exc) from None
