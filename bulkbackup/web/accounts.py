"""serve's accounts side: sign in with GitHub (priority users), sign out, the session's CSRF
token, public add, the logins autocomplete and a user's history.

The OAuth flow is in signin.py, the cookies in session.py, public add's counting in
public_add.py; these are the handlers. `/login/callback` is the OAuth app's callback URL.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import redis
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response

from bulkbackup.config import Settings
from bulkbackup.names import is_login
from bulkbackup.queue import history, keys, priority, tracked
from bulkbackup.redact import add_secrets
from bulkbackup.web import http, session
from bulkbackup.web.http import JSONResponse
from bulkbackup.web.public_add import GitHubUnavailable, OverLimit, PublicAdd
from bulkbackup.web.session import Session, Signer
from bulkbackup.web.signin import CALLBACK_PATH, OAuthApp, SignInFailed

log = logging.getLogger(__name__)
_T = TypeVar("_T")
FORM_MAX_BYTES = 4096
CODE_MAX_CHARS = 200
COMPLETE_MAX = 10
CSRF_HEADER = "x-csrf-token"
Page = Callable[..., Response]
Blocking = Callable[..., Awaitable[Any]]


class Accounts:
    def __init__(self, settings: Settings, r: redis.Redis, page: Page, blocking: Blocking
                 ) -> None:
        self.settings, self.r = settings, r
        self.page, self.blocking = page, blocking
        self.signer = Signer(settings.serve.session_secret)
        add_secrets([settings.serve.github_client_secret, settings.serve.session_secret])
        self.oauth = OAuthApp.of(settings)
        self.public = PublicAdd(r, settings) if settings.serve.public_add else None

    def close(self) -> None:
        if self.oauth is not None:
            self.oauth.close()
        if self.public is not None:
            self.public.close()

    def session_of(self, request: Request) -> Session | None:
        return session.read(request, self.signer)

    def context(self, request: Request) -> dict[str, Any]:
        """What every page's header needs: who is signed in (and the sign-out form's token),
        whether sign-in is offered."""
        return {"me": self.session_of(request), "sign_in": self.oauth is not None}

    # -- sign in, sign out --------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if self.oauth is None:
            raise HTTPException(404)
        state = secrets.token_urlsafe(32)
        redirect = self.oauth.authorize_url(self._callback_url(request), state)
        response = RedirectResponse(redirect, 302)
        session.set_cookie(response, request, session.STATE_COOKIE,
                           self.signer.sign(session.STATE_COOKIE, {"s": state}),
                           session.STATE_MAX_AGE_S)
        return response

    async def callback(self, request: Request) -> Response:
        if self.oauth is None:
            raise HTTPException(404)
        params = request.query_params
        kept = self.signer.unsign(session.STATE_COOKIE,
                                  request.cookies.get(session.STATE_COOKIE, ""),
                                  session.STATE_MAX_AGE_S)
        expected = kept.get("s") if kept else None
        state, code = params.get("state", ""), params.get("code", "")
        if not isinstance(expected, str) or not secrets.compare_digest(
                state.encode(), expected.encode()):
            return self._failed(request, "sign-in refused: this answer does not belong to a "
                                "sign-in started by this browser (state mismatch, or older "
                                "than 10 minutes)", 400)
        if params.get("error"):
            return self._failed(request, "sign-in cancelled on GitHub", 400)
        if not code or len(code) > CODE_MAX_CHARS or not code.isascii():
            return self._failed(request, "sign-in refused: no code from GitHub", 400)
        try:
            login = await run_in_threadpool(self.oauth.login_of, code,
                                            self._callback_url(request))
        except SignInFailed as exc:
            return self._failed(request, f"sign-in failed: {exc}", 502)
        spelled = await self.blocking(self._make_priority, login)
        log.info("signed in: %s (a priority user)", spelled)
        response = RedirectResponse(f"/users/{quote(spelled)}", 303)
        session.forget(response, request, session.STATE_COOKIE)
        session.save(response, request, self.signer, Session.new(spelled))  # a new CSRF token
        return response

    def _make_priority(self, login: str) -> str:
        """Track ``login`` (as `track` does: one account, one member) and make it a priority
        user; the spelling it is tracked under."""
        added, existing = tracked.add_never_synced(self.r, [login])
        spelled = existing[0][1] if existing else added[0]
        priority.make_priority(self.r, spelled)
        return spelled

    def _failed(self, request: Request, text: str, status: int) -> Response:
        response = self.page(request, "error.html", {"title": "sign-in", "banner": text},
                             status)
        session.forget(response, request, session.STATE_COOKIE)
        return response

    def _callback_url(self, request: Request) -> str:
        return str(request.base_url).rstrip("/") + CALLBACK_PATH

    async def logout_page(self, request: Request) -> Response:
        me = self.session_of(request)
        if me is None or not me.login:
            return RedirectResponse("/", 303)
        return self.page(request, "signout.html", {})

    async def logout(self, request: Request) -> Response:
        me = self.session_of(request)
        form = await _read_form(request)
        if me is None or not me.csrf_ok(form.get("csrf", "")):
            return self._failed(request, "sign-out refused: the form's token does not match "
                                "this browser's session (reload the page)", 403)
        response = RedirectResponse("/", 303)
        session.forget(response, request, session.SESSION_COOKIE)
        return response

    async def api_session(self, request: Request) -> Response:
        """The session (made when there is none): who is signed in, whether a priority user,
        and the CSRF token a script sends as X-CSRF-Token (with the cookie) to add users."""
        me = self.session_of(request)
        fresh = me is None
        me = me or Session.new()
        prio = await self.blocking(priority.is_priority, self.r, me.login) if me.login else None
        response = JSONResponse({"login": me.login or None, "priority": prio, "csrf": me.csrf,
                                 "sign_in": self.oauth is not None,
                                 "public_add": self.public is not None})
        if fresh:
            session.save(response, request, self.signer, me)
        return response

    # -- public add ----------------------------------------------------------------------------

    async def add_users(self, request: Request) -> Response:
        """POST /api/users without a token, with serve.public_add: logins that exist on
        GitHub, CSRF-protected, at most serve.public_add_per_hour per address."""
        assert self.public is not None
        me = self.session_of(request)
        if me is None or not me.csrf_ok(request.headers.get(CSRF_HEADER, "")):
            return JSONResponse({"error": "missing or wrong CSRF token: GET /api/session, then "
                                 "send its csrf as X-CSRF-Token with its cookie"}, 403)
        logins, error = await http.read_logins(request)
        if error:
            return JSONResponse({"error": error}, 400)
        most = self.settings.serve.public_add_per_hour
        if len(logins) > most:
            return JSONResponse({"error": f"at most {most} logins at once"}, 400)
        host = request.client.host if request.client else ""
        try:
            done = await self.blocking(self.public.add, host, logins)
        except OverLimit as exc:
            return JSONResponse({"error": f"at most {most} new logins an hour from one address:"
                                 f" try again in {exc.retry_after_s} s"}, 429,
                                headers={"Retry-After": str(exc.retry_after_s)})
        except GitHubUnavailable as exc:
            log.warning("public add: GitHub: %s", exc)
            return JSONResponse({"error": "GitHub did not answer: try again later"}, 503)
        log.info("added %d users publicly (%d already tracked, %d not on GitHub)",
                 len(done.added), len(done.existing), len(done.not_found))
        return JSONResponse({"added": done.added, "existing": done.existing,
                             "not_found": done.not_found})

    async def complete(self, request: Request) -> Response:
        """Tracked logins starting with ``prefix`` (the seed's /isvaliduser, for the forms'
        autocomplete): the search index, O(log N + COMPLETE_MAX)."""
        prefix = request.query_params.get("prefix", "")
        if not is_login(prefix):
            return JSONResponse({"logins": []})
        found = await self.blocking(_complete, self.r, prefix.lower())
        return JSONResponse({"logins": found})

    # -- a user's history ----------------------------------------------------------------------

    async def user_log(self, login: str) -> tuple[list[dict[str, Any]], bool]:
        """``login``'s last syncs (newest first) and whether it is a priority user: one
        pipelined round trip."""
        entries, prio = await self.blocking(_log_and_priority, self.r, login)
        return [e.to_json() for e in entries], prio


def _log_and_priority(r: redis.Redis, login: str) -> tuple[list[history.SyncEntry], bool]:
    pipe = r.pipeline(transaction=False)
    pipe.lrange(keys.history(login), 0, keys.HISTORY_MAX - 1)
    pipe.zscore(keys.PRIORITY, keys.member(login))
    raw, score = pipe.execute()
    found = [history.SyncEntry.decode(x) for x in raw]
    return [e for e in found if e is not None], score is not None


def _complete(r: redis.Redis, folded: str) -> list[str]:
    found = r.zrangebylex(keys.SEARCH, f"[{folded}", f"[{folded}\x7f", start=0,
                          num=COMPLETE_MAX)
    lowered = [x.decode() if isinstance(x, bytes) else str(x) for x in found]
    lowered = [x for x in lowered if is_login(x)]
    spellings = r.hmget(keys.LOGINS, lowered) if lowered else []
    return [s if isinstance(s, str) and s.lower() == low else low
            for low, s in zip(lowered, spellings, strict=True)]


async def _read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value each), read up to FORM_MAX_BYTES."""
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_MAX_BYTES:
                return {}
    except ClientDisconnect:
        return {}
    fields = parse_qs(body.decode("latin-1"), max_num_fields=20)
    return {k: v[0] for k, v in fields.items() if v}
