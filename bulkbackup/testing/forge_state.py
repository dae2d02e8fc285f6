"""The GitHub stand-in's state: what its request handlers (forge_http.py, forge_graphql.py)
read and write. The listing entries, the switches and the counters, the REST side's rate
limits, the GraphQL side's `Controls`, and the connections and backends in flight (so
`Forge.stop` can end them). `Forge` (forge.py) is a `ForgeState` that also builds
repositories and serves; the handlers see only this.
"""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bulkbackup.testing.forge_graphql_controls import Controls
from bulkbackup.testing.forge_quota import WINDOW_S, RateWindow, token_of
from bulkbackup.testing.hostile_packs import PackAnswer
from bulkbackup.testing.lfs import LfsObject
from bulkbackup.testing.oauth import OAuthApps
from bulkbackup.testing.releases import Releases

CORE_REQUESTS = 5000  # GitHub's REST quota per token and hour


def _requests(full: int, window_s: float, endless: bool = False) -> RateWindow:
    return RateWindow(full, window_s, "core", endless)


class ForgeState:
    """Switches: `stall_s`, `require_known_tokens` (unknown token: 401), `renamed` (old login ->
    new: 301), `link_host` (pagination links to another host), `etag_suffix`, `git_redirect`,
    `git_v2`, the hostile API's `api_*`; rate_limit, fail_5xx, set_token_budget; the GraphQL
    side's in `graphql`. Counters: `counters` ("api", "api_<status>", "api_5xx", "info_refs",
    "upload_pack", "git_bytes_sent*"; "api_after_spent": requests with a budgeted token after
    an answer had said its quota was spent), clones(), upload_packs(), pack_requests(),
    owner_requests() (API requests naming one owner, REST and GraphQL),
    `auth_headers_seen`. All of it is guarded by `lock`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.git_root = self.root / "git"
        self.url = ""  # set once serving
        self.lock = threading.Lock()
        self.users: dict[str, list[dict[str, Any]]] = {}  # login -> listing entries
        # login -> its public gists' entries, newest first (forge_gists.py)
        self.gists: dict[str, list[dict[str, Any]]] = {}
        self.counters: Counter[str] = Counter()
        # Login as asked -> REST listing pages and `GET /users/<login>`, and GraphQL owner
        # fields (an owner of a query counts once a query and page), naming it.
        self.per_owner: Counter[str] = Counter()
        self.auth_headers_seen: list[str] = []
        # Git LFS (testing/lfs.py): the objects by oid; every download's (host, oid,
        # Authorization or None).
        self.lfs_objects: dict[str, LfsObject] = {}
        self.lfs_seen: list[tuple[str, str, str | None]] = []
        # Releases and their assets (testing/releases.py); every asset download's (host,
        # path, Authorization or None).
        self.releases = Releases()
        self.asset_seen: list[tuple[str, str, str | None]] = []
        self.graphql = Controls()
        self.oauth = OAuthApps()  # Sign in with GitHub's side (oauth.py)
        self.stall_s = 30.0
        self.require_known_tokens = False
        self.renamed: dict[str, str] = {}  # old login -> new login: the API answers 301
        self.link_host: str | None = None  # set: pagination links name this host instead
        self.etag_suffix = ""  # appended inside every listing ETag (a misbehaving server)
        self._per_repo: Counter[tuple[str, str, str]] = Counter()
        self._stalled: set[tuple[str, str]] = set()
        self._stalled_mid: set[tuple[str, str]] = set()
        # (login, repo) -> a wrong answer to its increment fetches (forge_changes.set_pack_answer)
        self._pack_answers: dict[tuple[str, str], PackAnswer] = {}
        self._limited, self._limit_reset, self._limit_secondary = 0, 0.0, False
        self._limit_window_s = 0.0
        self._fail, self._fail_status = 0, 502
        self._budgets: dict[str, RateWindow] = {}
        self._core = _requests(CORE_REQUESTS, WINDOW_S, endless=True)
        self._stopping = threading.Event()  # set by stop: stalls and drips end
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._procs: set[subprocess.Popen[bytes]] = set()
        # Set to another server's base URL (e.g. a second Forge on `localhost` sharing this
        # root): every `info/refs` answers 302 to the same path there.
        self.git_redirect = ""
        # Off: `git http-backend` never sees the client's Git-Protocol header, so every client
        # gets protocol v0 (a server without v2; GitHub has it).
        self.git_v2 = True
        # A hostile API (tests of the client's bounds); each applies to every listing request.
        self.api_next_loop = False  # Link rel="next" names the page just served
        self.api_endless = False  # every page links to a next one, forever
        self.api_drip_s = 0.0  # > 0: a listing body goes out one byte per api_drip_s
        self.api_drip_head = False  # with api_drip_s: the status line and headers drip too
        self.api_pad_mb = 0  # > 0: listing bodies padded with this many MB of spaces (streamed)
        self.api_pad_unsized = False  # padded bodies without Content-Length (end at EOF)
        self.api_retry_after: str | None = None  # set: every answer is 429 with this Retry-After
        self.api_reset: str | None = None  # set: every answer is 403, Remaining 0, this Reset

    # -- switches and counters -------------------------------------------------------------

    def rate_limit(self, requests: int, reset_in_s: float, secondary: bool = False) -> None:
        """The next `requests` API calls answer 403 (primary: Remaining 0, Reset) or 429
        (secondary: Retry-After), until the reset time, `reset_in_s` after the first of them
        (counted from that call, not from now: a client's start-up, however slow, never
        misses the limit); at the reset time it lifts."""
        with self.lock:
            self._limited, self._limit_secondary = requests, secondary
            self._limit_window_s, self._limit_reset = reset_in_s, math.inf

    def fail_5xx(self, requests: int, status: int = 502) -> None:
        with self.lock:
            self._fail, self._fail_status = requests, status

    def set_token_budget(self, token: str, remaining: int, reset_in_s: float) -> None:
        """Requests with this token succeed `remaining` times, then 403 until the reset time,
        when the budget refills to `remaining` for another `reset_in_s`."""
        with self.lock:
            self._budgets[token] = _requests(remaining, reset_in_s)

    def reset_counters(self) -> None:
        with self.lock:
            self.counters.clear()
            self.per_owner.clear()
            self._per_repo.clear()

    def owner_requests(self, login: str) -> int:
        """API requests (REST pages, GraphQL owners of a query) that named ``login``."""
        with self.lock:
            return self.per_owner[login]

    def clones(self, login: str, name: str) -> int:
        """Clones (or fetches) of one repository: its `info/refs` requests."""
        with self.lock:
            return self._per_repo[("info_refs", login, name)]

    def upload_packs(self, login: str, name: str) -> int:
        """POST git-upload-pack requests to one repository (protocol v2: 2 per clone)."""
        with self.lock:
            return self._per_repo[("upload_pack", login, name)]

    def pack_requests(self, login: str, name: str) -> int:
        """POST git-upload-pack requests to one repository that want objects (not v2's
        `ls-refs`)."""
        with self.lock:
            return self._per_repo[("fetch", login, name)]

    # -- the REST side's rate limits (lock held) -------------------------------------------

    def refuses(self, token: str) -> bool:
        """Is this token unknown to a stand-in that requires known ones (401)?"""
        return bool(token) and self.require_known_tokens and token not in self._budgets

    def rest_window(self, token: str, now: float) -> RateWindow:
        """The token's budget if it has one, else the default quota; refilled if due."""
        quota = self._budgets.get(token) or self._core
        quota.refill_if_due(now)
        return quota

    def admit(self, auth: str) -> tuple[int, bytes, dict[str, str]]:
        """Rate limits and switches for one API request (lock held): (status, body, headers);
        status 0 means go ahead with these rate-limit headers."""
        now = time.time()
        token = token_of(auth)
        budget = self._budgets.get(token)
        if self.refuses(token):
            return 401, b'{"message": "Bad credentials"}', {}
        if self._fail > 0:
            self._fail -= 1
            return self._fail_status, b'{"message": "Server Error"}', {}
        quota = self.rest_window(token, now)
        if budget is not None and budget.told_spent:
            # Sent although an answer had already said this token's quota was spent.
            self.counters["api_after_spent"] += 1
        if self._limited > 0 and self._limit_reset == math.inf:
            self._limit_reset = now + self._limit_window_s  # the window opens with its first call
        if self._limited > 0 and now < self._limit_reset:
            self._limited -= 1
            if self._limit_secondary:
                wait = str(max(1, math.ceil(self._limit_reset - now)))
                return 429, b'{"message": "You have exceeded a secondary rate limit."}', {
                    **quota.headers(), "Retry-After": wait}
            return 403, b'{"message": "API rate limit exceeded for user."}', {
                **quota.headers(), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Used": str(quota.full),
                "X-RateLimit-Reset": str(math.ceil(self._limit_reset))}
        if budget is not None and budget.remaining <= 0:
            budget.told_spent = True
            return 403, b'{"message": "API rate limit exceeded for user."}', budget.headers()
        quota.spend(1, now)
        return 0, b"", quota.headers()
