"""HTTP helpers of the app: JSON responses, security headers, request bodies, formatting."""

from __future__ import annotations

import re
from typing import Any

import orjson
from markupsafe import Markup, escape
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulkbackup.names import is_login
from bulkbackup.web.users import PAGE_MAX, PAGE_SIZE, TRACK_MAX

BODY_MAX_BYTES = 64 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# Where a long name may wrap: after a hyphen, dot or underscore (a <wbr> there).
_BREAK_AFTER = re.compile(r"(?<=[-._])(?=.)")
BREAKABLE_CHARS = 24
SHORT_CHARS = 80
BAD_BODY = 'body must be JSON: {"logins": ["login", ...]}'


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


def is_api(request: Request) -> bool:
    """Answered in JSON or plain text rather than a page. A download's error is a page for a
    browser (it asks for text/html when it follows a link) and JSON for anything else."""
    path = request.url.path
    if path.startswith("/api/") or path in ("/healthz", "/metrics"):
        return True
    if path.endswith((".json", ".bundle", ".zip")):
        return "text/html" not in request.headers.get("accept", "")
    return False


def bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


async def read_logins(request: Request) -> tuple[list[str], str]:
    """The body's logins, validated (read up to BODY_MAX_BYTES); or an error message."""
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > BODY_MAX_BYTES:
                return [], f"body larger than {BODY_MAX_BYTES} bytes"
    except ClientDisconnect:  # gone, or closed at serve.body_timeout_s: no one to answer
        return [], "the body was not received"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [], BAD_BODY
    logins = doc.get("logins") if isinstance(doc, dict) else None
    if not isinstance(logins, list) or not logins:
        return [], BAD_BODY
    if len(logins) > TRACK_MAX:
        return [], f"at most {TRACK_MAX} logins per request"
    for login in logins:
        if not is_login(login):
            # Only a string is quoted: str() of a 1000-deep list recurses past Python's limit.
            shown = repr(login[:60]) if isinstance(login, str) else f"a {type(login).__name__}"
            return [], f"invalid login: {shown}"
    return [str(x) for x in logins], ""


def page_limit(text: str | None, default: int = PAGE_SIZE, most: int = PAGE_MAX) -> int:
    try:
        return max(1, min(int(text or default), most))
    except ValueError:
        return default


def size(n: object) -> str:
    """Bytes for people: 1.2 MB."""
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)  # pragma: no cover


def shorten(text: object, chars: int = SHORT_CHARS) -> str:
    """A one-line reason for a table cell: its first line, up to ``chars`` characters."""
    line = str(text or "").strip().split("\n", 1)[0]
    return line if len(line) <= chars else line[:chars - 1].rstrip() + "…"


def breakable(name: object) -> Markup:
    """``name`` escaped; when longer than BREAKABLE_CHARS, with a line-break opportunity
    after each - . _ (a long name wraps between its words, a short one stays whole; CSS
    breaks a long name without any as a last resort)."""
    text = str(name)
    parts = _BREAK_AFTER.split(text) if len(text) > BREAKABLE_CHARS else [text]
    return Markup("<wbr>").join(escape(p) for p in parts)
