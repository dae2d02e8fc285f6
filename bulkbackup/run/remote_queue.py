"""The queue of a remote worker (`run --server URL`): `serve`'s lease API in place of Redis,
the server in place of the store (run/work_queue.WorkQueue's remote side).

Leases are the server's locks (web/lease_api.py): this side keeps them alive with one refresh
request for every held user each lock_ttl/2 (as LockKeeper does on Redis) and remembers those
a refresh reported lost. The server fences every write (a lapsed lease cannot land an object),
so the fence here only stops a user's work early once it is known lost, or once the server
refused the token (revoked): then every write stops and the worker ends with that error.
What a local worker writes to Redis after a sync (pending verify marks, the user's history)
the server writes at `complete`; heartbeats and /workers rows are the server's too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from bulkbackup.errors import BulkbackupError, LockLost
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.queue import keys
from bulkbackup.queue.claims import ClaimBatch, Claimed, DueReason
from bulkbackup.queue.listings import Cached
from bulkbackup.queue.tracked import Completion
from bulkbackup.run.lease_client import LeaseClient, Outcome, ServerUnavailable, WorkerTokenRefused
from bulkbackup.run.remote_store import RemoteStore
from bulkbackup.run.uploads import Uploads
from bulkbackup.store import Store

log = logging.getLogger(__name__)

# Retries of a refresh that failed: soon, a lease not refreshed within its TTL is gone.
RETRY_S = 1.0
# An idle worker polls for the run's last users with one request (an empty lease says
# whether the run is over): 4 a second per idle process is little of the token's rate
# (serve.lease_requests_per_s), and a run ends at most this long after its last user.
IDLE_WAIT_S = 0.25


@dataclass(frozen=True)
class RemoteTarget:
    """Where a remote worker leases from, and its worker token."""

    url: str
    token: str = field(repr=False)

    def client(self, **kwargs: float | int) -> LeaseClient:
        return LeaseClient(self.url, self.token, **kwargs)  # type: ignore[arg-type]


class RemoteQueue:
    """One worker process's leases (its methods are called from the worker's threads)."""

    transient: tuple[type[Exception], ...] = (ServerUnavailable,)
    errors: tuple[type[Exception], ...] = (BulkbackupError,)
    # The lease API has no place for listings: a remote worker keeps every user it lists
    # (claims sized by its share, as before listings were handed over), never hands one over.
    shares_listings = False

    def __init__(self, target: RemoteTarget, run_start: float, lock_ttl_s: int) -> None:
        self.target = target
        self.run_start = run_start
        self.ttl_s = lock_ttl_s  # the server's, as its last answer said
        self.idle_wait_s = IDLE_WAIT_S
        self.client = target.client()
        # Its own client: no retries (a missed refresh is tried again within the TTL), and
        # never waiting behind the main thread's upload.
        self._refresher = target.client(retries=0, timeout_s=max(1.0, lock_ttl_s / 2))
        self._mu = threading.Lock()
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._refused = ""  # the server refused the token (revoked): every write stops
        self._verify: dict[str, list[str]] = {}  # login -> increments committed in its sync
        # What the last empty lease said of the run (monotonic time, remaining, in flight):
        # the `drained` right after it needs no request of its own.
        self._idle: tuple[float, int, int] | None = None
        self._stop = threading.Event()
        self._stores: list[RemoteStore] = []
        self._thread: threading.Thread | None = None

    # -- the refresher -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)

    def close(self) -> None:
        self._refresher.close()
        self.client.close()

    def _run(self) -> None:
        wait_s = self.ttl_s / 2
        while not self._stop.wait(wait_s):
            ok = self.refresh_once()
            wait_s = self.ttl_s / 2 if ok else min(RETRY_S, self.ttl_s / 4)

    def refresh_once(self) -> bool:
        """One refresh of every held user; False if the server did not answer."""
        members = self.held()
        if not members:
            return True
        try:
            _, lost = self._refresher.refresh([keys.login_of(m) for m in members])
        except WorkerTokenRefused as exc:
            with self._mu:
                self._refused = str(exc)
                self._lost |= self._held
            log.error("%s", exc)
            return True
        except BulkbackupError as exc:
            log.warning("lease refresh failed (will retry): %s", exc)
            return False
        with self._mu:
            for login in lost:
                member = keys.member(login)
                if member in self._held:
                    log.warning("lease lost: %s", login)
                    self._lost.add(member)
        return True

    # -- WorkQueue ---------------------------------------------------------------------------

    def open_store(self) -> Store:
        # Archives uploaded in the background, beside the git work (run/uploads.py).
        store = RemoteStore(self.target.client(), Uploads(self.target.client()))
        with self._mu:
            self._stores.append(store)  # told when a user is done (RemoteStore.forget)
        return store

    def broker(self, tokens: tuple[str, ...]) -> QuotaBroker:
        # No Redis: this process's own view of its tokens' quota (per-process quota).
        return QuotaBroker(None, tokens)

    def claim_due(self, n: int) -> ClaimBatch:
        """A lease of up to ``n`` users; the remote side answers each as needing a listing
        (it completes them with a plain finish)."""
        self._check_token()
        lease = self.client.lease(n, self.run_start)
        self.ttl_s = lease.lock_ttl_s
        self._idle = None if lease.in_flight is None else (
            time.monotonic(), lease.remaining, lease.in_flight)
        members = [keys.member(x) for x in lease.users]
        with self._mu:
            self._held.update(members)
            self._lost.difference_update(members)
        return ClaimBatch([Claimed(m, DueReason.SCHEDULED) for m in members], lease.remaining)

    def take_listings(self, members: list[str], most: int) -> Cached:
        """Nothing is ever cached for a remote worker (see `shares_listings`)."""
        return Cached()

    def store_listings(self, found: dict[str, bytes]) -> None:
        """Never called (`shares_listings` is false): nowhere to keep them."""

    def held(self) -> list[str]:
        with self._mu:
            return sorted(self._held)

    def drop(self, member: str) -> None:
        with self._mu:
            self._held.discard(member)
            self._lost.discard(member)
            self._verify.pop(keys.login_of(member), None)
            stores = list(self._stores)
        for store in stores:
            store.forget(keys.login_of(member))

    def fence(self, member: str) -> RemoteFence:
        return RemoteFence(self, member)

    def check(self, member: str) -> None:
        """Raise unless ``member``'s writes may go on, as far as this side knows."""
        self._check_token()
        with self._mu:
            if member in self._lost or member not in self._held:
                raise LockLost(f"lease lost: {keys.login_of(member)}")

    def _check_token(self) -> None:
        if self._refused:
            raise WorkerTokenRefused(self._refused)

    def finish(self, member: str, synced: bool, counts: str = "", repos: int = 0,
               nbytes: int = 0, error: str = "") -> Completion:
        login = keys.login_of(member)
        with self._mu:
            verify = self._verify.pop(login, [])
        try:
            if not synced:
                return _completion(self.client.give_back(login))
            return _completion(self.client.complete(login, True, counts, repos, nbytes,
                                                    self.run_start, error, verify))
        except LockLost:
            return Completion.LOST

    def finish_refs(self, member: str, counts: str = "", repos: int = 0,
                    nbytes: int = 0) -> Completion:
        return self.finish(member, True, counts, repos, nbytes)

    def fail(self, member: str, max_attempts: int) -> Completion:
        """Counted by the server against its own `run.max_attempts`."""
        try:
            return _completion(self.client.fail(keys.login_of(member), self.run_start))
        except LockLost:
            return Completion.LOST

    def drained(self) -> bool:
        self._check_token()
        idle, self._idle = self._idle, None
        if idle is not None and time.monotonic() - idle[0] < self.idle_wait_s:
            return idle[1] == 0 and idle[2] == 0  # the empty lease just made says
        status = self.client.status(self.run_start)
        return status.remaining == 0 and status.in_flight == 0

    def committed(self, login: str, repo: str) -> None:
        with self._mu:
            repos = self._verify.setdefault(login, [])
            if repo not in repos:
                repos.append(repo)

    def note_done(self, repos: int, nbytes: int) -> None:
        """Counted by the server (its /workers row of this token)."""

    def record_history(self, login: str, repos: int, nbytes: int, errors: int,
                       error: str) -> None:
        """Written by the server at the user's completion (queue/remote_leases.py)."""


def _completion(outcome: Outcome) -> Completion:
    return Completion.DEFERRED if outcome is Outcome.DEFERRED else Completion.DONE


@dataclass(frozen=True)
class RemoteFence:
    """A Fence (store/fenced.py) of a remote worker's writes for one user: the server
    confirms the lease at each commit, so both steps only look at what this side knows."""

    queue: RemoteQueue
    member: str

    def check(self) -> None:
        self.queue.check(self.member)

    def confirm(self) -> None:
        self.queue.check(self.member)

