"""Every archived state of one repository, a page at a time, for the repository page.

A state is a chain's base with its first ``seq`` increments applied (README "Incremental
archives"): the current chain's states, newest first, then each kept chain's. What a page
costs the store is bounded by the page, not by the history: the current chain's parts are
named by its base's metadata (`Chain`, `Increments`), never listed; the kept chains are found
by one listing of the repository's parts folder that stops where the current chain's parts
begin (a kept chain's base is its part 000000), read only when the page reaches past the
current chain. Per shown state: the HEAD of its own part (size, `LastSync`) and one ranged
read of its bundle header (the refs, at most HEADER_MAX_BYTES), and one more header for the
state just older than the page (what moved in the page's last state).
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bulkbackup.archive import chains, layout
from bulkbackup.archive.metadata import LAST_SYNC
from bulkbackup.errors import ArchiveError, NotFound
from bulkbackup.git.bundles import parse_header
from bulkbackup.store import Head, Store
from bulkbackup.timeutil import format_rfc3339, parse_rfc3339

PAGE_SIZE = 20
PAGE_MAX = 100
# A bundle header is read up to this size (a repository with ~30 000 refs); past it the
# state's refs are shown as unknown rather than read further for a web page.
HEADER_MAX_BYTES = 2 * 1024 * 1024
HEADER_FIRST_BYTES = 64 * 1024  # most headers (up to ~1 000 refs) fit in the first read
# Ref changes listed per state (the count says how many more).
MOVED_SHOWN = 20
# Downloads listed per state (past it: the first ones, the last, and a pattern).
PARTS_LISTED = 21
READ_THREADS = 8
CACHE_S = 30.0
CACHE_PAGES = 64
CURSOR_MAX_CHARS = 64


@dataclass(frozen=True)
class StateId:
    """A state: ``chain``'s base with increments 1..``seq`` applied."""

    chain: str
    seq: int

    def encode(self) -> str:
        return f"{self.chain}-{self.seq}"

    @classmethod
    def decode(cls, text: str) -> StateId | None:
        """None for anything that is not a state id this server made."""
        if len(text) > CURSOR_MAX_CHARS:
            return None
        chain, sep, seq = text.partition("-")
        if not sep or layout.chain_time(chain) is None or not (
                seq.isascii() and seq.isdigit() and len(seq) <= layout.SEQ_DIGITS):
            return None
        return cls(chain, int(seq))


@dataclass(frozen=True)
class RefMove:
    ref: str
    old: str | None  # None: new in this state
    new: str | None  # None: deleted in this state


@dataclass(frozen=True)
class State:
    """One archived state, as the page shows it."""

    id: StateId
    current: bool  # in the current chain (its base is `<repo>.bundle`)
    latest: bool
    time: datetime  # when it was archived
    at: str | None  # the `restore --at` time that selects exactly this state; None: none can
    base_key: str
    base_size: int
    part_key: str  # this state's own part (the base for seq 0)
    size: int  # bytes of this state's own part
    refs: int | None  # refs in this state (None: header unreadable or too large)
    moved: tuple[RefMove, ...] = ()
    moved_more: int = 0
    problem: str = ""  # what could not be read

    @property
    def when(self) -> str:
        return format_rfc3339(self.time)

    @property
    def parts_total(self) -> int:
        """How many objects rebuild this state: its base and its increments."""
        return 1 + self.id.seq

    def part_keys(self) -> list[str]:
        """The objects that rebuild this state, in the order they apply: all of them up to
        PARTS_LISTED, else the first PARTS_LISTED - 1 and the last (a page's size does not
        grow with the history; `part_url` names the others)."""
        login, repo = self._login_repo()
        seqs = list(range(1, self.id.seq + 1)) if self.parts_total <= PARTS_LISTED else [
            *range(1, PARTS_LISTED - 1), self.id.seq]
        return [self.base_key, *(layout.part_key(login, repo, self.id.chain, s) for s in seqs)]

    def part_url(self) -> str:
        """The path of increment ``{seq}`` (six digits) of this state's chain."""
        login, repo = self._login_repo()
        return "/users/" + layout.parts_prefix(login, repo, self.id.chain) + "{seq}.bundle"

    def _login_repo(self) -> tuple[str, str]:
        key = layout.parse_key(self.base_key)
        return key.login, key.repo


@dataclass
class StatesPage:
    login: str
    repo: str
    states: list[State]
    next: StateId | None
    problem: str = ""


@dataclass(frozen=True)
class _Chain:
    id: str
    base_key: str
    base: Head
    committed: int
    current: bool


@dataclass
class _Cache:
    mu: threading.Lock = field(default_factory=threading.Lock)
    pages: OrderedDict[tuple[str, ...], tuple[float, StatesPage | None]] = field(
        default_factory=OrderedDict)


class RepoStates:
    """Pages of a repository's states, reused for CACHE_S (parts never change once
    committed; a new state shows within CACHE_S)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="states")
        self._cache = _Cache()

    def page(self, store: Store, login: str, repo: str, after: StateId | None,
             limit: int) -> StatesPage | None:
        """The states after ``after`` (None: from the newest), at most ``limit``; None when
        the repository has no archive at all in the store."""
        key = (login, repo, after.encode() if after else "", str(limit))
        now = time.monotonic()
        with self._cache.mu:
            hit = self._cache.pages.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        page = self._read(store, login, repo, after, limit)
        with self._cache.mu:
            self._cache.pages[key] = (now + CACHE_S, page)
            self._cache.pages.move_to_end(key)
            while len(self._cache.pages) > CACHE_PAGES:
                self._cache.pages.popitem(last=False)
        return page

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, store: Store, login: str, repo: str, after: StateId | None,
              limit: int) -> StatesPage | None:
        base_key = layout.bundle_key(login, repo)
        head = store.head(base_key)
        if head is None:
            return None
        if damage := chains.increments_damage(head):
            return StatesPage(login, repo, [], None, f"{base_key}: {damage}")
        current = _Chain(chains.chain_of(head), base_key, head, chains.committed(head), True)
        # The page's states, the one just older (what moved in the last shown state; there
        # is a next page when it exists), and ``after`` itself (whether an `at` is unique).
        slots = _walk(store, login, repo, current, after, limit + 1 + (after is not None))
        context = bool(slots) and after is not None and (
            slots[0][0].id, slots[0][1]) == (after.chain, after.seq)
        if after is not None and not context:
            slots = slots[:limit + 1]  # ``after`` is gone (expired): no context to read
        states = self._states(store, login, repo, slots, context, limit)
        nxt = states[-1].id if states and len(slots) - context > limit else None
        return StatesPage(login, repo, states, nxt)

    def _parts(self, store: Store, login: str, repo: str, slots: list[tuple[_Chain, int]],
               context: bool) -> Iterator[_Part]:
        """The slots' parts, in order, read READ_THREADS at a time (so at most that many
        headers' refs are held at once); of the ``context`` slot only the time."""
        pending: deque[Future[_Part]] = deque()
        try:
            for i, slot in enumerate(slots):
                pending.append(self._pool.submit(_read_part, store, login, repo, *slot,
                                                 refs=not (context and i == 0)))
                if len(pending) >= READ_THREADS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for p in pending:
                p.cancel()

    def _states(self, store: Store, login: str, repo: str, slots: list[tuple[_Chain, int]],
                context: bool, limit: int) -> list[State]:
        """Each shown slot's state, compared with its older neighbour (what moved) and its
        newer one (whether its `at` is unique)."""
        out: list[State] = []
        newer: _Part | None = None
        held: _Part | None = None  # read, its state not made yet (waits for the older one)
        for i, part in enumerate(self._parts(store, login, repo, slots, context)):
            if held is not None:
                out.append(_state(newer, held, part))
                newer = _Part.dropped(held)
            elif i == 0 and context:
                newer = _Part.dropped(part)
                continue
            held = part if len(out) < limit else None
            if held is None:
                break
        if held is not None:
            out.append(_state(newer, held, None))  # the oldest state of all
        return out


@dataclass
class _Part:
    """A slot's own part: its HEAD and header, as read."""

    chain: _Chain
    seq: int
    key: str
    size: int
    time: datetime
    refs: dict[str, str] | None
    problem: str = ""

    @classmethod
    def dropped(cls, part: _Part) -> _Part:
        """``part`` without its refs (no longer needed: memory stays a window's)."""
        return cls(part.chain, part.seq, part.key, part.size, part.time, None, part.problem)


def _walk(store: Store, login: str, repo: str, current: _Chain, after: StateId | None,
          n: int) -> list[tuple[_Chain, int]]:
    """Up to ``n`` (chain, seq) slots, newest first, starting after ``after``."""
    out: list[tuple[_Chain, int]] = []
    for chain in _chains(store, login, repo, current, after):
        top = chain.committed
        if after is not None and chain.id == after.chain:
            top = min(top, after.seq)  # ``after`` itself first: the caller's context
        for seq in range(top, -1, -1):
            out.append((chain, seq))
            if len(out) >= n:
                return out
    return out


def _chains(store: Store, login: str, repo: str, current: _Chain, after: StateId | None
            ) -> Iterator[_Chain]:
    """The chains with states, newest first: the current one (when its base has data), then
    the kept ones (listed only when the walk gets there), skipping those newer than
    ``after``'s chain."""
    if current.base.size > 0 and (after is None or after.chain >= current.id):
        yield current
    kept = _kept_chains(store, login, repo, current.id)
    for chain_id in reversed(kept):
        if after is not None and chain_id > after.chain:
            continue
        base_key = layout.part_key(login, repo, chain_id, 0)
        base = store.head(base_key)
        if base is None or base.size == 0 or chains.increments_damage(base):
            continue  # expired since the listing, or a state no restore can rebuild
        yield _Chain(chain_id, base_key, base, chains.committed(base), False)


def _kept_chains(store: Store, login: str, repo: str, current: str) -> list[str]:
    """Ids of the kept chains (with a part 000000) older than ``current``, oldest first: the
    listing is in key order, chains by time, so it stops at the current chain's parts."""
    out: list[str] = []
    stop = layout.parts_prefix(login, repo, current)
    for info in store.list(layout.parts_prefix(login, repo)):
        if info.key >= stop:
            break
        key = layout.parse_key(info.key)
        if key.kind is layout.Kind.PART and key.seq == 0 and key.repo == repo:
            out.append(key.chain)
    return out


def _read_part(store: Store, login: str, repo: str, chain: _Chain, seq: int,
               refs: bool = True) -> _Part:
    """The slot's part: its size and time (a HEAD, but for a base: its chain says), and its
    refs (a ranged read of its header) when ``refs``."""
    if seq == 0:
        key, size = chain.base_key, chain.base.size
        when = layout.chain_time(chain.id) or chain.base.last_modified
    else:
        key = layout.part_key(login, repo, chain.id, seq)
        head = store.head(key)
        if head is None:
            return _Part(chain, seq, key, 0, layout.chain_time(chain.id) or datetime.min,
                         None, f"missing object {key}")
        size = head.size
        when = parse_rfc3339(head.get(LAST_SYNC)) or head.last_modified
    if not refs:
        return _Part(chain, seq, key, size, when, None)
    found, problem = _refs(store, key)
    return _Part(chain, seq, key, size, when, found, problem)


def _refs(store: Store, key: str) -> tuple[dict[str, str] | None, str]:
    """The refs of the bundle ``key``, or None and why not: a ranged read of its first
    HEADER_FIRST_BYTES (read whole, so an S3 connection goes back to the pool), and only
    when the header is longer, one of HEADER_MAX_BYTES."""
    for limit in (HEADER_FIRST_BYTES, HEADER_MAX_BYTES):
        try:
            with store.open(key, 0, limit) as f:
                data = f.read(limit)
            return parse_header(io.BytesIO(data), key, need_pack=False).refs, ""
        except NotFound:
            return None, f"missing object {key}"
        except ArchiveError as exc:
            if "truncated in its header" not in str(exc):
                return None, str(exc)
            if len(data) < limit:
                return None, str(exc)  # the whole object is shorter than its header
    return None, f"header above {HEADER_MAX_BYTES // (1024 * 1024)} MiB: refs not read"


def _state(newer: _Part | None, part: _Part, older: _Part | None) -> State:
    """``part``'s state; ``older`` (the state before it) says what moved, ``newer`` (the state
    after it) whether a `restore --at` time can select it."""
    moved: list[RefMove] = []
    if part.refs is not None and (older is None or older.refs is not None):
        before = older.refs if older is not None and older.refs is not None else {}
        names = sorted(set(part.refs) | set(before))
        moved = [RefMove(n, before.get(n), part.refs.get(n)) for n in names
                 if before.get(n) != part.refs.get(n)]
    at = _at(part)
    if at is not None and newer is not None and _starts(newer) <= at:
        at = None  # archived within the same second as the next state: --at cannot tell
    return State(
        StateId(part.chain.id, part.seq), part.chain.current,
        latest=newer is None and part.chain.current and part.seq == part.chain.committed,
        time=part.time, at=format_rfc3339(at) if at else None,
        base_key=part.chain.base_key, base_size=part.chain.base.size, part_key=part.key,
        size=part.size, refs=len(part.refs) if part.refs is not None else None,
        moved=tuple(moved[:MOVED_SHOWN]), moved_more=max(len(moved) - MOVED_SHOWN, 0),
        problem=part.problem)


def _starts(part: _Part) -> datetime:
    """When a restore starts taking ``part``'s state: a base from its chain's exact time, an
    increment from its `LastSync` (whole seconds)."""
    return part.time


def _at(part: _Part) -> datetime | None:
    """The whole second `restore --at` is given for ``part``: its time, rounded up (a chain
    id has microseconds, `--at` whole seconds)."""
    if part.problem.startswith("missing"):
        return None
    when = part.time
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return when


def to_json(page: StatesPage, base_url: str, commands: dict[str, Any]) -> dict[str, Any]:
    """The page as `/api/users/<login>/<repo>/states` answers it."""
    return {"login": page.login, "repo": page.repo,
            "states": [state_json(s, base_url, commands.get(s.id.encode(), {}))
                       for s in page.states],
            "next": page.next.encode() if page.next else None, "error": page.problem or None}


def state_json(s: State, base_url: str, commands: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": s.id.encode(), "chain": s.id.chain, "increments": s.id.seq,
        "current_chain": s.current, "latest": s.latest, "time": format_rfc3339(s.time),
        "at": s.at, "size": s.size, "base_size": s.base_size, "refs": s.refs,
        "moved": [{"ref": m.ref, "old": m.old, "new": m.new} for m in s.moved],
        "moved_more": s.moved_more, "error": s.problem or None,
        "downloads": [f"{base_url}/users/{k}" for k in s.part_keys()],
        "downloads_total": s.parts_total, "part_url": base_url + s.part_url(),
        "commands": commands}
