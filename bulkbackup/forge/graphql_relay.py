"""A host's small GraphQL queries merged into one (issue 22): the run's tail in one stream.

A GraphQL query costs a point whether it carries 2 owners or 100. At a run's end each worker
is left with its big owners' last pages and sends them in queries of its own, a few pages
each, one after the other: 4 workers, 4 streams of small queries. So a worker sends a query
that is not full (fewer owners than github.graphql_batch) to the run's relay instead (a thread
of the supervisor, over a pipe of its own): the relay waits WINDOW_S for the other workers'
queries, sends them as one (up to a batch: the same rules, the same fleet-wide quota broker),
and hands each worker the answers of its own aliases, renumbered, as if it had sent the query
itself. Full queries still go out from each worker, in parallel.

Nothing is lost when the relay is not there or does not answer: a worker whose relay closed
its pipe, refused the query or did not answer within its bound (the wait for quota and the
query's own bounds) sends it itself; a reply that comes later is dropped (its number is
old). Only the answer of a query the relay sent whole (HTTP 200, JSON, no limit) is handed
over: a split, a failure or a rate limit is the worker's own to meet, by its own rules.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from bulkbackup.forge.github_graphql_query import Ask

log = logging.getLogger(__name__)

WINDOW_S = 0.25  # how long the relay waits for the other workers' queries


@dataclass(frozen=True)
class RelayRequest:
    seq: int  # the worker's request number: its reply carries it
    asks: tuple[Ask, ...]
    gists: frozenset[str]
    # The worker's deadline for a wait for quota (time.monotonic(): one clock for the host's
    # processes); past it the relay gives up and the worker meets the limit by its own rules.
    deadline: float | None = None


@dataclass(frozen=True)
class RelayReply:
    seq: int
    payload: dict[str, Any] | None  # the answer for aliases u0.. of the request; None: send it


class RelayClient:
    """A worker's end (GraphQLLister.relay)."""

    def __init__(self, conn: Connection, wait_s: float) -> None:
        self.conn, self.wait_s = conn, wait_s
        self.seq = 0
        self.closed = False
        self.relayed = 0  # queries the relay answered (figures for tests, logs)

    def ask(self, asks: Sequence[Ask], gists: set[str], deadline: float | None = None
            ) -> dict[str, Any] | None:
        """The answer to a query of ``asks`` (aliases u0..), or None: send it yourself."""
        if self.closed:
            return None
        self.seq += 1
        try:
            self.conn.send(RelayRequest(self.seq, tuple(asks), frozenset(gists), deadline))
            until = time.monotonic() + self.wait_s
            while (left := until - time.monotonic()) > 0 and self.conn.poll(left):
                reply = self.conn.recv()
                if isinstance(reply, RelayReply) and reply.seq == self.seq:
                    self.relayed += reply.payload is not None
                    return reply.payload
        except (EOFError, OSError, ValueError):  # the relay is gone: never ask it again
            self.closed = True
        return None


# One query for the merged asks (GraphQLLister.send_query): its answer, or None.
Send = Callable[[list[Ask], set[str], float | None], dict[str, Any] | None]


class QueryRelay:
    """The supervisor's end: one thread answering every worker's pipe. ``send`` is a
    GraphQLLister's `send_query` (its broker, bounds and retries)."""

    def __init__(self, send: Send, batch: int) -> None:
        self.send, self.batch = send, batch
        self._conns: dict[int, Connection] = {}
        self._sending: dict[int, threading.Lock] = {}  # id(pipe) -> its send lock
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graphql-relay", daemon=True)
        self.queries = 0  # merged queries sent (figures for tests)

    def attach(self, index: int, conn: Connection) -> None:
        """Worker ``index``'s pipe (a restarted worker's replaces its predecessor's)."""
        with self._mu:
            old = self._conns.pop(index, None)
            self._conns[index] = conn
        if old is not None:
            _close(old)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._mu:
            for conn in self._conns.values():
                _close(conn)
            self._conns.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # the workers would wait for it: never end on a surprise
                log.exception("GraphQL relay: a round failed (its workers send themselves)")
                self._stop.wait(0.5)

    def _round(self) -> None:
        pending = self._gather(0.5)
        if pending:
            until = time.monotonic() + WINDOW_S
            while (left := until - time.monotonic()) > 0 and \
                    sum(len(r.asks) for _, r in pending) < self.batch:
                pending += self._gather(left)
            self._serve(pending)

    def _gather(self, timeout_s: float) -> list[tuple[Connection, RelayRequest]]:
        with self._mu:
            conns = [c for c in self._conns.values() if not c.closed]
        if not conns:
            self._stop.wait(timeout_s)
            return []
        out = []
        try:
            ready = wait(conns, timeout_s)
        except (OSError, ValueError):  # a pipe closed meanwhile (a worker replaced, or close)
            return []
        for conn in ready:
            assert isinstance(conn, Connection)
            try:
                while conn.poll(0):
                    got = conn.recv()
                    if isinstance(got, RelayRequest):
                        out.append((conn, got))
            except (EOFError, OSError):  # a worker gone: its pipe goes with it
                self._forget(conn)
        return out

    def _forget(self, conn: Connection) -> None:
        with self._mu:
            for index, known in list(self._conns.items()):
                if known is conn:
                    del self._conns[index]
            self._sending.pop(id(conn), None)
        _close(conn)

    def _serve(self, pending: list[tuple[Connection, RelayRequest]]) -> None:
        group: list[tuple[Connection, RelayRequest]] = []
        for item in pending:
            if group and sum(len(r.asks) for _, r in group) + len(item[1].asks) > self.batch:
                self._answer(group)
                group = []
            group.append(item)
        if group:
            self._answer(group)

    def _answer(self, group: list[tuple[Connection, RelayRequest]]) -> None:
        asks = [a for _, r in group for a in r.asks]
        gists = set().union(*(r.gists for _, r in group))
        deadlines = [r.deadline for _, r in group if r.deadline is not None]
        payload: dict[str, Any] | None = None
        try:
            payload = self.send(asks, gists, min(deadlines, default=None))
        except Exception as exc:  # noqa: BLE001 - each worker then meets it itself
            log.info("GraphQL relay: %s (the workers send their queries themselves)",
                     type(exc).__name__)
        self.queries += 1
        offset = 0
        for conn, request in group:
            part = None if payload is None else _part(payload, offset, len(request.asks))
            offset += len(request.asks)
            # A thread per reply: a send blocks while the pipe is full, and a worker that
            # stopped waiting (its bound passed) reads it only at its next request; the
            # relay must not wait for that.
            threading.Thread(target=self._reply, args=(conn, RelayReply(request.seq, part)),
                             name="graphql-relay-reply", daemon=True).start()

    def _reply(self, conn: Connection, reply: RelayReply) -> None:
        with self._mu:  # one send at a time per pipe (a late reply and the next one)
            lock = self._sending.setdefault(id(conn), threading.Lock())
        try:
            with lock:
                conn.send(reply)
        # The worker is gone; or the relay closed the pipe under a blocked send, which
        # multiprocessing reports as a TypeError (its handle is None by then).
        except (OSError, ValueError, TypeError):
            self._forget(conn)


def _close(conn: Connection) -> None:
    """Close a pipe another thread may be closing too (a reply's send failing as the relay
    closes): the second close finds the descriptor gone."""
    with contextlib.suppress(OSError):
        conn.close()


def _part(payload: dict[str, Any], offset: int, n: int) -> dict[str, Any]:
    """The answer of aliases u<offset>..u<offset+n-1>, renumbered from u0."""
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    assert isinstance(data, dict)
    names = {f"u{offset + i}": f"u{i}" for i in range(n)}
    errors = []
    for error in payload.get("errors") or []:
        path = error.get("path") if isinstance(error, dict) else None
        if isinstance(path, list) and path[:1] and path[0] in names:
            errors.append({**error, "path": [names[path[0]], *path[1:]]})
    part: dict[str, Any] = {"data": {new: data.get(old) for old, new in names.items()}}
    if errors:
        part["errors"] = errors
    return part
