"""The Starlette application: routes, error pages, security headers.

Every page has a JSON twin under /api. Nothing but POST /api/users changes state. Blocking
reads (redis-py, boto3, files) run in Starlette's threadpool: measured, that is cheaper here
than redis.asyncio for a page's pipelined reads.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bulkbackup.config import Settings
from bulkbackup.errors import StoreError
from bulkbackup.names import is_archive_name, is_login
from bulkbackup.store import Store
from bulkbackup.web import data, http, memory, metrics, session, states
from bulkbackup.web.accounts import Accounts
from bulkbackup.web.download_routes import DownloadRoutes
from bulkbackup.web.http import JSONResponse, Unavailable
from bulkbackup.web.lease_api import LeaseApi
from bulkbackup.web.lease_objects import LeaseObjects
from bulkbackup.web.lease_uploads import LeaseUploads
from bulkbackup.web.render import svg
from bulkbackup.web.restore_cmds import at_command, restore_commands, state_commands
from bulkbackup.web.users import Cursor, Users

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
_T = TypeVar("_T")
Doc = dict[str, Any]
DETAIL_CONCURRENCY = 4
# Threads for the pages' blocking reads (as many as Starlette's threadpool allows its own).
READ_THREADS = 40
QUEUE_UNAVAILABLE = "queue status unavailable: Redis unreachable"


class Site:
    """The handlers, sharing one Redis client, one store and the templates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A pool of its own: a hop costs a page a quarter of what anyio's threadpool does
        # (measured with 50 at once: 16 vs 57 us), and downloads' reads cannot hold up pages.
        self.reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="serve-reads")
        self.backend = data.Backend(settings)
        self.users = Users(self.backend.r)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters["size"] = http.size
        env.filters["iso"] = data.iso
        env.filters["duration"] = data.duration
        env.filters["short"] = http.shorten
        env.filters["breakable"] = http.breakable
        self.templates = Jinja2Templates(env=env)
        self.registry = metrics.registry(self.backend)
        # Users described at once (each runs up to detail.HEAD_THREADS store requests).
        self.detail_slots = asyncio.Semaphore(DETAIL_CONCURRENCY)
        self.states = states.RepoStates()
        self.trimmer = memory.Trimmer()
        self.downloads = DownloadRoutes(self, settings.serve.redirect_downloads,
                                        self.trimmer.download_ended)
        self.accounts = Accounts(settings, self.backend.r, self.page, self.blocking)
        # Remote workers (DESIGN.md "Remote workers"): the lease API and their objects.
        self.lease_api = LeaseApi(settings, self.backend.r, self.blocking)
        self.lease_objects = LeaseObjects(self.lease_api, self.live_store)
        self.lease_uploads = LeaseUploads(self.lease_objects)

    # -- plumbing ----------------------------------------------------------------------------

    async def blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking read in the reads' threads; a failing backend becomes Unavailable."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.reads, functools.partial(fn, *args))
        except redis.RedisError as exc:
            log.warning("redis: %s", exc)
            raise Unavailable("redis") from None
        except StoreError as exc:
            if type(exc) is not StoreError:
                raise
            log.warning("store: %s", exc)
            raise Unavailable("store") from None

    def page(self, request: Request, name: str, context: Doc, status: int = 200) -> Response:
        context.setdefault("banner", "")
        for key, value in self.accounts.context(request).items():
            context.setdefault(key, value)
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    async def live_store(self) -> Store:
        """The store, when it answers (checked at most every few seconds): a local store
        whose folder is gone would otherwise look empty and answer 404s."""
        store = self.backend.fresh_store()
        if store is not None:
            return store
        if await run_in_threadpool(self.backend.store_problem):
            raise Unavailable("store")
        return await self.blocking(self.backend.store)

    async def store_or_none(self) -> Store | None:
        try:
            return await self.live_store()
        except Unavailable:
            return None

    async def store_banner(self) -> str:
        if await self.store_or_none() is None:
            return "The archive store does not answer right now."
        return ""

    # -- dashboard ---------------------------------------------------------------------------

    async def api_stats(self, request: Request) -> Response:
        stats = await self.blocking(data.stats, self.backend.r,
                                    self.settings.events.full_pass_days)
        return JSONResponse(stats.to_json())

    async def index(self, request: Request) -> Response:
        stats = await self.blocking(data.stats, self.backend.r,
                                    self.settings.events.full_pass_days)
        public = self.accounts.public is not None
        me = self.accounts.session_of(request)
        fresh = public and me is None  # the public add form needs a session's CSRF token
        me = session.Session.new() if fresh else me
        response = self.page(request, "index.html", {
            "s": stats, "banner": await self.store_banner(), "public_add": public,
            "can_add": bool(self.settings.serve.admin_token), "me": me,
            "rate_svg": svg.users_per_minute(stats.users_per_minute),
            "fresh_svg": svg.freshness(stats.freshness)})
        if fresh and me is not None:
            session.save(response, request, self.accounts.signer, me)
        return response

    # -- users -------------------------------------------------------------------------------

    async def list_users(self, request: Request) -> tuple[Doc, int]:
        q = request.query_params.get("q", "")
        raw_cursor = request.query_params.get("cursor", "")
        limit = http.page_limit(request.query_params.get("limit"))
        if q and not is_login(q):
            return {"error": "q must be the start of a login (letters, digits, hyphens)",
                    "users": [], "next": None, "q": q}, 400
        if q:  # the cursor is the last login shown, lowercased
            if raw_cursor and not (is_login(raw_cursor) and raw_cursor == raw_cursor.lower()
                                   and raw_cursor.startswith(q.lower())):
                return {"error": "invalid cursor", "users": [], "next": None, "q": q}, 400
            rows, after, more = await self.blocking(self.users.search, q, limit,
                                                    await self.store_or_none(), raw_cursor)
            return {"users": [r.to_json() for r in rows], "next": after, "more": more,
                    "q": q}, 200
        cursor = Cursor.decode(raw_cursor) if raw_cursor else None
        if raw_cursor and cursor is None:
            return {"error": "invalid cursor", "users": [], "next": None, "q": q}, 400
        store_or_none = await self.store_or_none()  # only for users without a summary
        rows, nxt = await self.blocking(self.users.page, cursor, limit, store_or_none)
        return {"users": [r.to_json() for r in rows], "next": nxt.encode() if nxt else None,
                "q": ""}, 200

    async def api_users(self, request: Request) -> Response:
        doc, status = await self.list_users(request)
        return JSONResponse(doc, status_code=status)

    async def users_page(self, request: Request) -> Response:
        doc, status = await self.list_users(request)
        return self.page(request, "users.html", {"doc": doc,
                                                 "banner": await self.store_banner()}, status)

    async def user_detail(self, request: Request) -> Doc:
        login = await self.spelled(request.path_params["login"])
        store = await self.live_store()
        # Waiting here holds no thread: the threadpool stays free for other requests.
        async with self.detail_slots:
            detail = await self.blocking(self.users.detail, login, store)
        if detail is None:
            raise HTTPException(404)
        return detail

    async def spelled(self, login: str) -> str:
        """``login`` as its account is tracked and stored (logins ignore case); 404 for
        what is not a login."""
        if not is_login(login):
            raise HTTPException(404)
        return await self.blocking(self.users.spelling, login)

    async def api_user(self, request: Request) -> Response:
        """`show --json`'s object, with the status, the badge and what could not be read."""
        detail = await self.user_detail(request)
        return JSONResponse({**detail["user"], "status": detail["status"],
                             "badge": detail["badge"], "unavailable": detail["unavailable"]})

    async def user_page(self, request: Request) -> Response:
        detail = await self.user_detail(request)
        base, login = str(request.base_url).rstrip("/"), detail["user"]["login"]
        commands = {r["name"]: restore_commands(base, login, r)
                    for r in detail["user"]["repositories"] if r["bundle_bytes"]}
        banner = QUEUE_UNAVAILABLE if "redis" in detail["unavailable"] else ""
        syncs, prio = ([], False) if banner else await self.accounts.user_log(login)
        return self.page(request, "user.html", {"d": detail, "u": detail["user"],
                                                "commands": commands, "banner": banner,
                                                "syncs": syncs, "priority": prio})

    async def api_user_log(self, request: Request) -> Response:
        detail = await self.user_detail(request)
        login = detail["user"]["login"]
        syncs, _ = await self.accounts.user_log(login)
        return JSONResponse({"login": login, "syncs": syncs})

    async def user_log_page(self, request: Request) -> Response:
        detail = await self.user_detail(request)
        login = detail["user"]["login"]
        syncs, _ = await self.accounts.user_log(login)
        return self.page(request, "log.html", {"u": detail["user"], "syncs": syncs})

    # -- a repository's states ---------------------------------------------------------------

    async def repo_states(self, request: Request) -> tuple[states.StatesPage, Doc]:
        """A page of the repository's states and, per state, the commands that rebuild it."""
        repo = request.path_params["repo"]
        if not is_archive_name(repo):  # a wiki's states too
            raise HTTPException(404)
        login = await self.spelled(request.path_params["login"])
        raw_cursor = request.query_params.get("cursor", "")
        after = states.StateId.decode(raw_cursor) if raw_cursor else None
        if raw_cursor and after is None:
            raise HTTPException(404)
        limit = http.page_limit(request.query_params.get("limit"), states.PAGE_SIZE,
                                states.PAGE_MAX)
        store = await self.live_store()
        async with self.detail_slots:  # the same bound as a user page's store reads
            page = await self.blocking(self.states.page, store, login, repo, after, limit)
        if page is None:
            raise HTTPException(404)
        base = str(request.base_url).rstrip("/")
        commands: Doc = {}
        for s in page.states:
            git_cmds = state_commands(base, login, repo, s.base_key, s.id.chain, s.id.seq)
            commands[s.id.encode()] = {
                "restore": at_command(login, repo, s.at) if s.at else None, "git": git_cmds}
        return page, commands

    async def api_repo_states(self, request: Request) -> Response:
        page, commands = await self.repo_states(request)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(states.to_json(page, base, commands))

    async def repo_page(self, request: Request) -> Response:
        page, commands = await self.repo_states(request)
        return self.page(request, "repo.html", {
            "p": page, "commands": commands})

    # -- workers, writes, health ---------------------------------------------------------------

    async def api_workers(self, request: Request) -> Response:
        rows = await self.blocking(data.workers, self.backend.r)
        return JSONResponse({"workers": [vars(w) for w in rows]})

    async def workers_page(self, request: Request) -> Response:
        rows = await self.blocking(data.workers, self.backend.r)
        return self.page(request, "workers.html", {"workers": rows})

    async def add_users(self, request: Request) -> Response:
        token = self.settings.serve.admin_token
        if self.accounts.public is not None and not request.headers.get("authorization"):
            return await self.accounts.add_users(request)  # public add (serve.public_add)
        if not token:
            return JSONResponse({"error": "adding users is disabled (no admin token)"}, 403)
        if not hmac.compare_digest(http.bearer(request).encode(), token.encode()):
            return JSONResponse({"error": "wrong or missing admin token"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        logins, error = await http.read_logins(request)
        if error:
            return JSONResponse({"error": error}, 400)
        added, existing = await self.blocking(self.users.track, logins)
        log.info("added %d users by the API (%d already tracked)", len(added), len(existing))
        return JSONResponse({"added": added, "existing": existing})

    async def favicon(self, request: Request) -> Response:
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    async def healthz(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.backend.r.ping)
        except redis.RedisError:
            return PlainTextResponse("redis unavailable\n", 503)
        if await run_in_threadpool(self.backend.store_problem):
            return PlainTextResponse("store unavailable\n", 503)
        return PlainTextResponse("ok\n")

    async def metrics_text(self, request: Request) -> Response:
        body = await self.blocking(metrics.render, self.registry)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    # -- errors ------------------------------------------------------------------------------

    async def unavailable(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Unavailable)
        if http.is_api(request):
            return JSONResponse({"error": str(exc)}, 503)
        what = "The database (Redis)" if exc.part == "redis" else "The archive store"
        return self.page(request, "error.html", {
            "banner": f"{what} does not answer right now.", "title": "unavailable"}, 503)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = "not found" if exc.status_code == 404 else "error"
        if http.is_api(request):
            return JSONResponse({"error": text}, exc.status_code)
        return self.page(request, "error.html", {"title": text}, exc.status_code)

    async def internal(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__,
                  exc_info=exc)
        return PlainTextResponse("internal error\n", 500)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.index), Route("/api/stats", self.api_stats),
            Route("/users", self.users_page),
            Route("/api/users", self.api_users, methods=["GET"]),
            Route("/api/users", self.add_users, methods=["POST"]),
            Route("/users/{login}.json", self.downloads.user_object),  # before /users/{login}
            Route("/users/{login}", self.user_page), Route("/api/users/{login}", self.api_user),
            Route("/users/{login}/log", self.user_log_page),  # before the downloads
            Route("/api/users/{login}/log", self.api_user_log),
            Route("/users/{login}/{file}", self.downloads.download),
            Route("/users/{login}/gists/{rest:path}", self.downloads.download_gist),
            Route("/users/{login}/{repo}/states", self.repo_page),
            Route("/api/users/{login}/{repo}/states", self.api_repo_states),
            Route("/users/{login}/{folder}/{chain}/{part}", self.downloads.download_part),
            Route("/workers", self.workers_page), Route("/api/workers", self.api_workers),
            Route("/healthz", self.healthz), Route("/metrics", self.metrics_text),
            Route("/login", self.accounts.login), Route("/login/callback", self.accounts.callback),
            Route("/logout", self.accounts.logout_page, methods=["GET"]),
            Route("/logout", self.accounts.logout, methods=["POST"]),
            Route("/api/session", self.accounts.api_session),
            Route("/api/logins", self.accounts.complete),
            Route("/favicon.ico", self.favicon),
            *self.lease_api.routes([*self.lease_objects.routes(),
                                    *self.lease_uploads.routes()]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]


def create_app(settings: Settings) -> Starlette:
    site = Site(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        trimming = asyncio.create_task(site.trimmer.run())
        yield
        trimming.cancel()
        site.users.stored.close()
        site.states.close()
        site.accounts.close()
        site.backend.close()
        site.lease_objects.close()
        site.reads.shutdown(wait=False, cancel_futures=True)

    app = Starlette(routes=site.routes(), lifespan=lifespan, exception_handlers={
        Unavailable: site.unavailable, HTTPException: site.http_error,
        Exception: site.internal})
    app.add_middleware(http.SecurityHeaders)
    return app
