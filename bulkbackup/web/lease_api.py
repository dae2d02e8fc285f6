"""The lease API of `serve` for remote workers (DESIGN.md "Remote workers"; the endpoints and
their JSON: docs/serve.md). Every request carries `Authorization: Bearer <worker token>`; a
token acts only on the users it leased. The objects' endpoints are in lease_objects.py.

    POST /api/lease                    {"n", "run_start"?} -> {"lease", "users", "remaining",
                                        "in_flight" (when no user was leased), ...}
    POST /api/lease/refresh            {"users"} -> {"kept", "lost", "lock_ttl_s"}
    POST /api/lease/status             {"run_start"?} -> {"remaining", "in_flight", ...}
    POST /api/lease/<login>/complete   {"synced", "counts", "repos", "bytes", "run_start",
                                        "error"?, "verify"?}
    POST /api/lease/<login>/fail       {"run_start"}
    POST /api/lease/<login>/give-back  {}
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulkbackup.archive.layout import UserCounts
from bulkbackup.config import Settings
from bulkbackup.names import is_login, is_repo_name
from bulkbackup.queue import keys, worker_tokens
from bulkbackup.queue.connection import Scripts
from bulkbackup.queue.remote_leases import RemoteLeases, token_of
from bulkbackup.queue.tracked import Completion
from bulkbackup.web.http import BODY_MAX_BYTES, JSONResponse, bearer
from bulkbackup.web.remote_workers import RemoteWorkers, write_beat

Handler = Callable[[Request], Awaitable[Response]]
Blocking = Callable[..., Awaitable[Any]]
# How far in the future a run's start may be given (clocks of other machines).
RUN_START_SLACK_S = 5.0
# Repositories one completion may mark pending verify (a user's increments in one sync).
VERIFY_MAX = 1000


@dataclass(frozen=True)
class Leased:
    """Who asks (a worker token's name) and, for a user's endpoint, the user and whether
    that token holds its lease."""

    name: str
    login: str = ""
    member: str = ""
    held: bool = False


class ApiError(Exception):
    """An answer other than 200: its status and one line for the worker."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 **extra: object) -> None:
        super().__init__(message)
        self.status, self.headers, self.extra = status, headers or {}, extra


class LeaseApi:
    """The handlers; ``blocking`` runs a blocking call in the threadpool (Site.blocking:
    Redis or the store failing is a 503)."""

    def __init__(self, settings: Settings, r: Any, blocking: Blocking) -> None:
        self.settings, self.r, self.blocking = settings, r, blocking
        self.leases = RemoteLeases(r, Scripts(r), settings.run.lock_ttl_s,
                                   settings.run.max_attempts)
        self.workers = RemoteWorkers(settings.serve.lease_requests_per_s,
                                     settings.serve.lease_burst)
        self._offset_s: float | None = None  # Redis server time minus ours (read once)

    # -- plumbing ----------------------------------------------------------------------------

    async def token_name(self, request: Request) -> str:
        """The name of the request's worker token (401 unless it is a live one; 429 past its
        rate); its last use and its /workers row are written now and then."""
        return (await self.authorize(request, None)).name

    async def leased(self, request: Request) -> Leased:
        """The token and the path's user, leased by that token (401, 429 as token_name; then
        403: not a login, or a user the token does not hold: another's, or its lease lapsed).
        The token and the user's lock are read in one round trip to Redis."""
        return held(await self.authorize_user(request))

    async def authorize_user(self, request: Request) -> Leased:
        """authorize for the path's user (its lease not yet required: see ``held``)."""
        login = request.path_params["login"]
        return await self.authorize(request, login if is_login(login) else "")

    async def authorize(self, request: Request, login: str | None) -> Leased:
        """The token's name and, for ``login``, whether the token holds it (one blocking
        call: a thread hop and a pipelined read, not one of each per question)."""
        member = keys.member(login) if login else None
        name, wid = await self.blocking(_lookup, self.r, bearer(request), member)
        if name is None:
            raise ApiError(401, "unknown or revoked worker token",
                           {"WWW-Authenticate": "Bearer"})
        wait_s = self.workers.take(name)
        if wait_s > 0:
            raise ApiError(429, "too many requests for this worker token",
                           {"Retry-After": str(max(1, math.ceil(wait_s)))})
        self.beat(name)
        return Leased(name, login or "", member or "",
                      wid is not None and token_of(wid) == name)

    def beat(self, name: str, changed: bool = False) -> None:
        """Write the token's last use and its /workers row when due (in the background)."""
        touch, beat = self.workers.due_writes(name, changed)
        if touch or beat:
            figures = self.workers.figures(name) if beat else None
            asyncio.get_running_loop().run_in_executor(None, write_beat, self.r, name, touch,
                                                       figures)

    async def now(self) -> float:
        """Redis server time (unix s): the clock offset is read once, in the threadpool."""
        if self._offset_s is None:
            self._offset_s = float(await self.blocking(self.leases.clock_offset_s))
        return time.time() + self._offset_s

    async def run_start(self, doc: dict[str, Any]) -> float:
        value = doc.get("run_start")
        now = await self.now()
        if value is None:
            return now
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ApiError(400, "run_start must be a number (unix s, the server's clock)")
        return min(float(value), now + RUN_START_SLACK_S)

    # -- leases ------------------------------------------------------------------------------

    async def lease(self, request: Request) -> Response:
        name = await self.token_name(request)
        doc = await read_json(request)
        n = doc.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ApiError(400, "n must be a positive integer")
        n = min(n, self.settings.serve.lease_batch_max)
        start = await self.run_start(doc)
        wid, members, remaining = await self.blocking(self.leases.lease, name, n, start)
        if members and await self.blocking(worker_tokens.lookup, self.r,
                                           bearer(request)) != name:
            # Revoked while this lease was made: `revoke` removes the token, then gives back
            # its leases, and may have looked before these were taken. Given back here.
            await self.blocking(self._give_back, name, members)
            raise ApiError(401, "unknown or revoked worker token",
                           {"WWW-Authenticate": "Bearer"})
        answer: dict[str, Any] = {"lease": wid, "users": [keys.login_of(m) for m in members]}
        if not members:
            # An empty lease is an idle worker's poll: it is followed by "is the run over?",
            # answered here (the status endpoint's figures) to save that request.
            remaining, answer["in_flight"] = await self.blocking(self.leases.status, start)
        self.beat(name, changed=bool(members))
        return JSONResponse({**answer, "remaining": remaining,
                             "lock_ttl_s": self.leases.lock_ttl_s,
                             "server_time": await self.now()})

    def _give_back(self, name: str, members: list[str]) -> None:
        for member in members:
            self.leases.finish(name, member, False, "", 0, 0, 0.0)

    async def refresh(self, request: Request) -> Response:
        name = await self.token_name(request)
        logins = (await read_json(request)).get("users")
        if not isinstance(logins, list) or not all(isinstance(x, str) and is_login(x)
                                                   for x in logins):
            raise ApiError(400, 'body must be {"users": ["login", ...]}')
        kept, lost = await self.blocking(self.leases.refresh, name,
                                         [keys.member(x) for x in dict.fromkeys(logins)])
        return JSONResponse({"kept": [keys.login_of(m) for m in kept],
                             "lost": [keys.login_of(m) for m in lost],
                             "lock_ttl_s": self.leases.lock_ttl_s})

    async def complete(self, request: Request) -> Response:
        got = await self.leased(request)
        name, login, member = got.name, got.login, got.member
        doc = await read_json(request)
        synced, counts = doc.get("synced"), doc.get("counts", "")
        repos, nbytes = doc.get("repos", 0), doc.get("bytes", 0)
        if not isinstance(synced, bool):
            raise ApiError(400, "synced must be true or false")
        if not isinstance(counts, str) or (counts and UserCounts.decode(counts) is None):
            raise ApiError(400, "counts must be a user's counts (archive.layout.UserCounts)")
        error = doc.get("error", "")
        if not isinstance(error, str):
            raise ApiError(400, "error must be a string")
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**53
                   for x in (repos, nbytes)):
            raise ApiError(400, "repos and bytes must be integers >= 0")
        verify = doc.get("verify", [])
        if not isinstance(verify, list) or len(verify) > VERIFY_MAX or not all(
                is_repo_name(x) for x in verify):
            raise ApiError(400, f"verify must be a list of at most {VERIFY_MAX} repositories")
        result = await self.blocking(self.leases.finish, name, member, synced, counts, repos,
                                     nbytes, await self.run_start(doc), error[:4000],
                                     verify if synced else [])
        if result is Completion.DONE and synced:
            self.workers.note_done(name, repos, nbytes)
        self.beat(name, changed=True)
        return completion(login, result)

    async def status(self, request: Request) -> Response:
        """What is left of a run started at ``run_start``: a remote pool's start (the
        server's clock, the users due) and its end (nothing due, nothing in flight)."""
        name = await self.token_name(request)
        doc = await read_json(request)
        start = await self.run_start(doc)
        remaining, in_flight = await self.blocking(self.leases.status, start)
        self.beat(name)
        return JSONResponse({"remaining": remaining, "in_flight": in_flight,
                             "lock_ttl_s": self.leases.lock_ttl_s,
                             "server_time": await self.now()})

    async def fail(self, request: Request) -> Response:
        got = await self.leased(request)
        name, login, member = got.name, got.login, got.member
        doc = await read_json(request)
        result = await self.blocking(self.leases.fail, name, member, await self.run_start(doc))
        return completion(login, result)

    async def give_back(self, request: Request) -> Response:
        got = await self.leased(request)
        name, login, member = got.name, got.login, got.member
        result = await self.blocking(self.leases.finish, name, member, False, "", 0, 0, 0.0)
        return completion(login, result)

    def routes(self, objects: list[BaseRoute]) -> list[BaseRoute]:
        return [
            Route("/api/lease", guarded(self.lease), methods=["POST"]),
            Route("/api/lease/refresh", guarded(self.refresh), methods=["POST"]),
            Route("/api/lease/status", guarded(self.status), methods=["POST"]),
            Route("/api/lease/{login}/complete", guarded(self.complete), methods=["POST"]),
            Route("/api/lease/{login}/fail", guarded(self.fail), methods=["POST"]),
            Route("/api/lease/{login}/give-back", guarded(self.give_back), methods=["POST"]),
            *objects,
        ]


def held(got: Leased) -> Leased:
    """``got`` if its token holds its user's lease; else 403 (not a login, or not held)."""
    if not got.login:
        raise ApiError(403, "not a login")
    if not got.held:
        raise ApiError(403, f"no lease on {got.login} for this worker token", result="lost")
    return got


def _lookup(r: Any, token: str, member: str | None) -> tuple[str | None, str | None]:
    """(the token's name or None, the worker id holding ``member``'s lock or None): both
    read in one pipelined round trip (worker_tokens.lookup, RemoteLeases.holder)."""
    if not token or len(token) > worker_tokens.TOKEN_MAX_CHARS:
        return None, None
    pipe = r.pipeline(transaction=False)
    pipe.hget(keys.WORKER_TOKEN_HASHES, worker_tokens.token_hash(token))
    if member is not None:
        pipe.get(keys.lock(member))
    name, *held = pipe.execute()
    return _text(name), _text(held[0]) if held else None


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def completion(login: str, result: Completion) -> Response:
    if result is Completion.LOST:
        return JSONResponse({"error": f"the lease on {login} was lost", "result": "lost"}, 409)
    return JSONResponse({"result": result.name.lower()})


def guarded(handler: Handler) -> Handler:
    """``handler`` with its ApiError answered as JSON: {"error": ..., **extra}."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return JSONResponse({"error": str(exc), **exc.extra}, exc.status,
                                headers=exc.headers)

    return run


async def read_json(request: Request) -> dict[str, Any]:
    """The body, a JSON object of at most BODY_MAX_BYTES ({} when empty)."""
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > BODY_MAX_BYTES:
                raise ApiError(413, f"body larger than {BODY_MAX_BYTES} bytes")
    except ClientDisconnect:
        raise ApiError(400, "the body was not received") from None
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "body must be a JSON object")
    return doc
