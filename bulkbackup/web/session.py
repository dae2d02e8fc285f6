"""Signed cookies: the session (who is signed in, the CSRF token) and the sign-in's `state`.

A cookie's value is `<payload>.<mac>`: the payload base64url JSON, the mac HMAC-SHA256 of the
cookie's name and the payload under serve.session_secret (a random key per process when it
is empty). The name is in the mac, so a value cannot move from one cookie to the other. The
payload holds its issue time; past its max age a cookie is refused whatever its
Max-Age said. Cookies are HttpOnly, SameSite=Lax, Path=/, and Secure when the request came
over https (or X-Forwarded-Proto https from a proxy serve believes). Nothing secret is in a
payload: no OAuth token ever is (signed, not encrypted).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bulkbackup.names import is_login

SESSION_COOKIE = "bb_session"
STATE_COOKIE = "bb_signin"
SESSION_MAX_AGE_S = 14 * 86400
STATE_MAX_AGE_S = 600  # a sign-in must come back from GitHub within 10 minutes
COOKIE_MAX_CHARS = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def _mac(self, name: str, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{name}.{payload}".encode(), hashlib.sha256).digest())

    def sign(self, name: str, doc: dict[str, Any]) -> str:
        payload = _b64(orjson.dumps({**doc, "t": int(time.time())}))
        return f"{payload}.{self._mac(name, payload)}"

    def unsign(self, name: str, value: str, max_age_s: int) -> dict[str, Any] | None:
        """The payload of a value this server signed for cookie ``name`` within
        ``max_age_s``; None for anything else."""
        if not value or len(value) > COOKIE_MAX_CHARS or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(name, payload).encode()):
            return None
        try:
            doc = orjson.loads(_unb64(payload))
        except ValueError:
            return None
        issued = doc.get("t") if isinstance(doc, dict) else None
        if not isinstance(issued, int) or not 0 <= time.time() - issued <= max_age_s:
            return None
        return dict(doc)


@dataclass(frozen=True)
class Session:
    """A browser's session: the account signed in ("" for none) and its CSRF token (the
    forms that change something carry it; a request without it is refused)."""

    login: str
    csrf: str

    @classmethod
    def new(cls, login: str = "") -> Session:
        return cls(login, secrets.token_urlsafe(32))

    def csrf_ok(self, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.csrf.encode())


def read(request: Request, signer: Signer) -> Session | None:
    doc = signer.unsign(SESSION_COOKIE, request.cookies.get(SESSION_COOKIE, ""),
                        SESSION_MAX_AGE_S)
    if doc is None:
        return None
    login, csrf = doc.get("l"), doc.get("c")
    if not isinstance(csrf, str) or len(csrf) < 32 or not isinstance(login, str) \
            or (login and not is_login(login)):
        return None
    return Session(login, csrf)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age_s: int
               ) -> None:
    response.set_cookie(name, value, max_age=max_age_s, path="/", httponly=True,
                        samesite="lax", secure=is_https(request))


def save(response: Response, request: Request, signer: Signer, session: Session) -> None:
    set_cookie(response, request, SESSION_COOKIE,
               signer.sign(SESSION_COOKIE, {"l": session.login, "c": session.csrf}),
               SESSION_MAX_AGE_S)


def forget(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax",
                           secure=is_https(request))
