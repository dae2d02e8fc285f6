"""The run's GraphQL relay (forge/graphql_relay.py) in the supervisor: its own lister, on the
fleet-wide quota broker, and one pipe per worker."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

from bulkbackup.config import Settings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.graphql_relay import QueryRelay, RelayClient
from bulkbackup.forge.quota_broker import QuotaBroker


@dataclass
class HostRelay:
    relay: QueryRelay
    lister: GraphQLLister
    stop: threading.Event

    def worker_end(self, index: int, ctx: Any) -> Connection:
        """A new pipe for worker ``index``: the relay keeps one end, the worker gets this."""
        mine, theirs = ctx.Pipe()
        self.relay.attach(index, mine)
        return theirs  # type: ignore[no-any-return]

    def close(self) -> None:
        self.stop.set()  # a query waiting for quota ends: each worker sends its own
        self.relay.close()
        self.lister.close()


def open_host_relay(settings: Settings, r: redis.Redis | None, procs: int) -> HostRelay | None:
    """The relay of a Redis-connected GraphQL run of several workers; else None."""
    if settings.github.api != "graphql" or r is None or procs < 2:
        return None
    stop = threading.Event()
    lister = GraphQLLister(settings.github, QuotaBroker(r, settings.github.tokens), stop)
    relay = QueryRelay(lister.send_query, settings.github.graphql_batch)
    relay.start()
    return HostRelay(relay, lister, stop)


def relay_client(settings: Settings, conn: Connection) -> RelayClient:
    """A worker's end: it waits for a reply as long as sending the query itself could take
    (the wait for quota, then each attempt's bounds)."""
    g = settings.github
    return RelayClient(conn, g.max_rate_wait_s + (g.max_retries + 2) * 5 * g.timeout_s)
