"""A run's small GraphQL queries merged by its relay (forge/graphql_relay.py): listers on real
pipes, the relay's own lister against the stand-in over HTTP, a real Redis quota broker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.graphql_relay import QueryRelay, RelayClient
from bulkbackup.forge.listing import ListingOutcome, OwnerListing
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.testing import forge_graphql
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import wait_until
from tests.test_graphql import rest_listing, settings

OWNERS = {"big-a": 1000, "big-b": 1000}


@pytest.fixture
def world(forge: Forge) -> Forge:
    forge.add_users({login: [RepoSpec(f"r{j}", missing=True) for j in range(n)]
                     for login, n in OWNERS.items()})
    return forge


@pytest.fixture
def relay(world: Forge, r: redis.Redis) -> Iterator[QueryRelay]:
    s = settings(world)
    sender = GraphQLLister(s, QuotaBroker(r, s.tokens))
    out = QueryRelay(sender.send_query, s.graphql_batch)
    out.start()
    yield out
    out.close()
    sender.close()


def worker_lister(world: Forge, r: redis.Redis, relay: QueryRelay, index: int
                  ) -> GraphQLLister:
    s = settings(world)
    lister = GraphQLLister(s, QuotaBroker(r, s.tokens))
    mine, theirs = multiprocessing.Pipe()
    relay.attach(index, mine)
    lister.relay = RelayClient(theirs, wait_s=60)
    return lister


def list_together(listers: list[GraphQLLister], logins: list[str]) -> dict[str, OwnerListing]:
    """Each lister lists its owner in a thread of its own, at the same time (as workers)."""
    results: dict[str, Any] = {}

    def one(lister: GraphQLLister, login: str) -> None:
        results.update(lister.list_owners([login]))

    threads = [threading.Thread(target=one, args=(x, y)) for x, y in zip(listers, logins,
                                                                          strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_two_workers_small_queries_go_as_one(world: Forge, r: redis.Redis,
                                             relay: QueryRelay) -> None:
    listers = [worker_lister(world, r, relay, i) for i in range(2)]
    got = list_together(listers, list(OWNERS))
    for login in OWNERS:
        assert got[login].outcome is ListingOutcome.LISTED
        assert [x["name"] for x in got[login].stored] == [
            e["name"] for e in rest_listing(world, login)]
    relayed = sum(x.relay.relayed for x in listers if x.relay)
    # Each owner alone: 6 queries of 1 or 2 pages (both ends). Through the relay the two
    # workers' queries went together: fewer queries than they asked.
    assert relayed >= 10 and relay.queries < relayed, (relay.queries, relayed)
    assert forge_graphql.controls(world).counters["requests"] == relay.queries
    for lister in listers:
        lister.close()


def test_without_its_relay_a_worker_sends_its_queries_itself(
        world: Forge, r: redis.Redis, relay: QueryRelay) -> None:
    lister = worker_lister(world, r, relay, 0)
    relay.close()  # the supervisor's relay gone: its pipes closed
    got = lister.list_owners(["big-a"])
    assert got["big-a"].outcome is ListingOutcome.LISTED and len(got["big-a"].stored) == 1000
    assert lister.relay is not None and lister.relay.closed and lister.relay.relayed == 0
    assert lister.stats.queries == 6  # all its own
    lister.close()


def test_a_query_the_relay_could_not_send_is_the_workers_own(
        world: Forge, r: redis.Redis, relay: QueryRelay) -> None:
    """The relay's query fails (502, past its lister's 2 retries): no answer is handed over,
    and the worker sends the query itself, by its own rules, and lists its owner."""
    c = forge_graphql.controls(world)
    with world.lock:
        c.fail = 3  # the relay's attempts; the worker's own then pass
    lister = worker_lister(world, r, relay, 0)
    got = lister.list_owners(["big-b"])
    assert got["big-b"].outcome is ListingOutcome.LISTED and len(got["big-b"].stored) == 1000
    assert relay.queries >= 1 and lister.stats.queries >= 1  # one was the worker's own
    assert c.counters["status_502"] == 3
    lister.close()


def test_a_worker_that_stopped_waiting_holds_up_no_other(
        world: Forge, r: redis.Redis, relay: QueryRelay) -> None:
    """Worker 0 gives up on the relay at once (its bound: 1 ms) and sends its queries
    itself, never reading the relay's replies (pages of 100 repositories: more than a pipe
    holds); worker 1's queries still go through the relay."""
    hasty, patient = (worker_lister(world, r, relay, i) for i in range(2))
    assert hasty.relay is not None
    hasty.relay.wait_s = 0.001
    assert hasty.list_owners(["big-a"])["big-a"].outcome is ListingOutcome.LISTED
    got = patient.list_owners(["big-b"])
    assert got["big-b"].outcome is ListingOutcome.LISTED and len(got["big-b"].stored) == 1000
    assert patient.relay is not None and patient.relay.relayed >= 6
    assert patient.stats.queries == 0  # none of its own
    for lister in (hasty, patient):
        lister.close()


def _ask_and_die(conn: Any) -> None:
    """A worker process killed right after handing the relay its query (SIGKILL)."""
    from bulkbackup.forge.github_graphql_query import Ask
    from bulkbackup.forge.graphql_relay import RelayRequest

    conn.send(RelayRequest(1, (Ask("big-a", None),), frozenset()))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_while_its_query_waits_blocks_nothing(
        world: Forge, r: redis.Redis, relay: QueryRelay) -> None:
    """A real worker process SIGKILLed with its query at the relay: the relay's answer to it
    finds no one and its pipe is dropped; the next worker on that place is served."""
    mine, theirs = multiprocessing.Pipe()
    relay.attach(0, mine)
    dead = multiprocessing.get_context("fork").Process(target=_ask_and_die, args=(theirs,))
    dead.start()
    theirs.close()
    dead.join(30)
    assert dead.exitcode == -signal.SIGKILL
    wait_until(lambda: relay.queries >= 1, "its query sent all the same", 30)
    successor = worker_lister(world, r, relay, 0)  # the restarted worker's pipe
    got = successor.list_owners(["big-b"])
    assert got["big-b"].outcome is ListingOutcome.LISTED and len(got["big-b"].stored) == 1000
    assert successor.relay is not None and successor.relay.relayed >= 6
    successor.close()
