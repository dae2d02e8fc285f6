"""The Starlette application: routes, error pages, security headers.

Every page has a JSON twin under /api. Nothing but POST /api/users changes state. Blocking
reads (redis-py, boto3, files) run in Starlette's threadpool.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import orjson
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulkbackup.config import Settings
from bulkbackup.errors import StoreError
from bulkbackup.names import is_login, is_repo_name
from bulkbackup.store import Store
from bulkbackup.web import data, downloads, metrics
from bulkbackup.web.render import svg
from bulkbackup.web.users import PAGE_MAX, PAGE_SIZE, TRACK_MAX, Cursor, Users

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
_T = TypeVar("_T")
BODY_MAX_BYTES = 64 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Unavailable(Exception):
    """Redis or the store does not answer: 503 and a banner, never a traceback."""

    def __init__(self, part: str) -> None:
        super().__init__(f"{part} unavailable")
        self.part = part


class SecurityHeaders:
    """Adds the security headers to every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path in ("/healthz", "/metrics")


def create_app(settings: Settings) -> Starlette:
    backend = data.Backend(settings)
    users = Users(backend.r)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["size"] = _size
    env.filters["iso"] = data.iso
    templates = Jinja2Templates(env=env)
    registry = metrics.registry(backend)

    async def blocking(fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking read in the threadpool; a failing backend becomes Unavailable."""
        try:
            return await run_in_threadpool(fn, *args)
        except redis.RedisError as exc:
            log.warning("redis: %s", exc)
            raise Unavailable("redis") from None
        except StoreError as exc:
            if type(exc) is not StoreError:
                raise
            log.warning("store: %s", exc)
            raise Unavailable("store") from None

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200
             ) -> Response:
        context.setdefault("banner", "")
        return templates.TemplateResponse(request, name, context, status_code=status)

    async def live_store() -> Store:
        """The store, when it answers (checked at most every few seconds): a local store
        whose folder is gone would otherwise look empty and answer 404s."""
        store = backend.fresh_store()
        if store is not None:
            return store
        if await run_in_threadpool(backend.store_problem):
            raise Unavailable("store")
        return await blocking(backend.store)

    async def store_banner() -> str:
        if backend.fresh_store() is not None:
            return ""
        problem = await run_in_threadpool(backend.store_problem)
        return "The archive store does not answer right now." if problem else ""

    # -- dashboard ---------------------------------------------------------------------------

    async def api_stats(request: Request) -> Response:
        stats = await blocking(data.stats, backend.r)
        return JSONResponse(stats.to_json())

    async def index(request: Request) -> Response:
        stats = await blocking(data.stats, backend.r)
        return page(request, "index.html", {
            "s": stats, "banner": await store_banner(),
            "rate_svg": svg.users_per_minute(stats.users_per_minute),
            "fresh_svg": svg.freshness(stats.freshness)})

    # -- users -------------------------------------------------------------------------------

    async def list_users(request: Request) -> tuple[dict[str, Any], int]:
        q = request.query_params.get("q", "")
        raw_cursor = request.query_params.get("cursor", "")
        limit = _limit(request.query_params.get("limit"))
        if q and not is_login(q):
            return {"error": "q must be the start of a login (letters, digits, hyphens)",
                    "users": [], "next": None, "q": q}, 400
        cursor = Cursor.decode(raw_cursor) if raw_cursor else None
        if raw_cursor and cursor is None:
            return {"error": "invalid cursor", "users": [], "next": None, "q": q}, 400
        if q:
            store = await live_store()
            rows, more = await blocking(users.search, q, limit, store)
            return {"users": [r.to_json() for r in rows], "next": None, "more": more,
                    "q": q}, 200
        store_or_none = backend.fresh_store()
        if store_or_none is None and not await run_in_threadpool(backend.store_problem):
            store_or_none = await blocking(backend.store)
        rows, nxt = await blocking(users.page, cursor, limit, store_or_none)
        return {"users": [r.to_json() for r in rows], "next": nxt.encode() if nxt else None,
                "q": ""}, 200

    async def api_users(request: Request) -> Response:
        doc, status = await list_users(request)
        return JSONResponse(doc, status_code=status)

    async def users_page(request: Request) -> Response:
        doc, status = await list_users(request)
        return page(request, "users.html", {"doc": doc, "banner": await store_banner()},
                    status)

    async def user_detail(request: Request) -> dict[str, Any]:
        login = request.path_params["login"]
        if not is_login(login):
            raise HTTPException(404)
        store = await live_store()
        detail = await blocking(users.detail, login, store)
        if detail is None:
            raise HTTPException(404)
        return detail

    async def api_user(request: Request) -> Response:
        return JSONResponse((await user_detail(request))["user"])

    async def user_page(request: Request) -> Response:
        detail = await user_detail(request)
        return page(request, "user.html", {"d": detail, "u": detail["user"],
                                           "base": str(request.base_url).rstrip("/")})

    async def user_object(request: Request) -> Response:
        login = request.path_params["login"]
        if not is_login(login):
            raise HTTPException(404)
        store = await live_store()
        head = await blocking(store.head, login)
        if head is None:
            raise HTTPException(404)
        return await blocking(downloads.respond_json, request, store, login, head)

    async def download(request: Request) -> Response:
        login, file = request.path_params["login"], request.path_params["file"]
        repo, dot, kind = file.rpartition(".")
        if not dot or kind not in downloads.CONTENT_TYPES or not is_login(login) \
                or not is_repo_name(repo):
            raise HTTPException(404)
        key = f"{login}/{repo}.{kind}"
        store = await live_store()
        head = await blocking(store.head, key)
        if head is None or head.size == 0:  # a zero-byte bundle means "no archive"
            raise HTTPException(404)
        return await blocking(downloads.respond, request, store, key, kind, head,
                              settings.serve.redirect_downloads)

    # -- workers, writes, health ---------------------------------------------------------------

    async def api_workers(request: Request) -> Response:
        rows = await blocking(data.workers, backend.r)
        return JSONResponse({"workers": [vars(w) for w in rows]})

    async def workers_page(request: Request) -> Response:
        rows = await blocking(data.workers, backend.r)
        return page(request, "workers.html", {"workers": rows})

    async def add_users(request: Request) -> Response:
        token = settings.serve.admin_token
        if not token:
            return JSONResponse({"error": "adding users is disabled (no admin token)"}, 403)
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "wrong or missing admin token"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        logins, error = await _read_logins(request)
        if error:
            return JSONResponse({"error": error}, 400)
        added, existing = await blocking(users.track, logins)
        log.info("added %d users by the API (%d already tracked)", len(added), len(existing))
        return JSONResponse({"added": added, "existing": existing})

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(backend.r.ping)
        except redis.RedisError:
            return PlainTextResponse("redis unavailable\n", 503)
        problem = await run_in_threadpool(backend.store_problem)
        if problem:
            return PlainTextResponse("store unavailable\n", 503)
        return PlainTextResponse("ok\n")

    async def metrics_text(request: Request) -> Response:
        body = await blocking(metrics.render, registry)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    # -- errors ------------------------------------------------------------------------------

    async def unavailable(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Unavailable)
        if _is_api(request):
            return JSONResponse({"error": str(exc)}, 503)
        what = "The database (Redis)" if exc.part == "redis" else "The archive store"
        return page(request, "error.html", {"banner": f"{what} does not answer right now.",
                                            "title": "unavailable"}, 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = "not found" if exc.status_code == 404 else "error"
        if _is_api(request) or request.url.path.endswith((".json", ".bundle", ".zip")):
            return JSONResponse({"error": text}, exc.status_code)
        return page(request, "error.html", {"title": text}, exc.status_code)

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__,
                  exc_info=exc)
        return PlainTextResponse("internal error\n", 500)

    routes = [
        Route("/", index), Route("/api/stats", api_stats),
        Route("/users", users_page), Route("/api/users", api_users, methods=["GET"]),
        Route("/api/users", add_users, methods=["POST"]),
        Route("/users/{login}.json", user_object),
        Route("/users/{login}", user_page), Route("/api/users/{login}", api_user),
        Route("/users/{login}/{file}", download),
        Route("/workers", workers_page), Route("/api/workers", api_workers),
        Route("/healthz", healthz), Route("/metrics", metrics_text),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={
        Unavailable: unavailable, HTTPException: http_error, Exception: internal},
        lifespan=_closing(backend))
    app.add_middleware(SecurityHeaders)
    return app


def _closing(backend: data.Backend) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        backend.close()

    return lifespan


async def _read_logins(request: Request) -> tuple[list[str], str]:
    """The body's logins, validated; or an error message."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_MAX_BYTES:
            return [], f"body larger than {BODY_MAX_BYTES} bytes"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [], 'body must be JSON: {"logins": ["login", ...]}'
    logins = doc.get("logins") if isinstance(doc, dict) else None
    if not isinstance(logins, list) or not logins:
        return [], 'body must be JSON: {"logins": ["login", ...]}'
    if len(logins) > TRACK_MAX:
        return [], f"at most {TRACK_MAX} logins per request"
    for login in logins:
        if not is_login(login):
            return [], f"invalid login: {str(login)[:60]!r}"
    return [str(x) for x in logins], ""


def _limit(text: str | None) -> int:
    try:
        return max(1, min(int(text or PAGE_SIZE), PAGE_MAX))
    except ValueError:
        return PAGE_SIZE


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)  # pragma: no cover
