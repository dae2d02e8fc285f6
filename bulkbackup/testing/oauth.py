"""The stand-in's OAuth side (GitHub's OAuth web application flow), for serve's "Sign in
with GitHub" in tests and the demo.

- `GET /login/oauth/authorize?client_id&redirect_uri&state`: a page where a browser types
  the account to sign in as and clicks "Authorize" (or "Cancel"); with `auto_login` set,
  a 302 back at once, as GitHub does for an app the account already authorized.
- `POST /login/oauth/authorize` (that page's form): a 302 to `redirect_uri?code=&state=`
  (`error=access_denied` on Cancel).
- `POST /login/oauth/access_token` (client_id, client_secret, code, redirect_uri; form or
  JSON): `{"access_token", "token_type", "scope"}` in JSON when asked (Accept), else
  urlencoded; a code serves once, within CODE_TTL_S; a refusal is a 200 with an `error`.
- `GET /user` with `Authorization: Bearer <token>`: the account (401 without a known token).

State is its own (`apps`, codes, tokens: `issued` keeps every token handed out, for tests
that check where it went) under its own lock; forge_http.py routes these paths here.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

AUTHORIZE = "/login/oauth/authorize"
EXCHANGE = "/login/oauth/access_token"
USER = "/user"
CODE_TTL_S = 600
_JSON = {"Content-Type": "application/json; charset=utf-8"}
_HTML = {"Content-Type": "text/html; charset=utf-8"}


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Grant:
    login: str
    client_id: str
    redirect_uri: str
    expires: float


class OAuthApps:
    """Switches: `auto_login` (a login: authorize answers at once, signed in as it).
    Counters: `counters` ("authorize", "token", "token_refused", "user")."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.apps: dict[str, str] = {}  # client id -> secret
        self.auto_login: str | None = None
        self.counters: Counter[str] = Counter()
        self.issued: list[str] = []  # every token handed out
        self._codes: dict[str, _Grant] = {}
        self._tokens: dict[str, str] = {}  # token -> login

    def add_app(self, client_id: str, secret: str) -> None:
        with self.lock:
            self.apps[client_id] = secret

    @staticmethod
    def handles(path: str) -> bool:
        return path in (AUTHORIZE, EXCHANGE, USER)

    def answer(self, method: str, path: str, query: str, headers: Mapping[str, str],
               body: bytes, users: Collection[str]) -> Reply:
        """The answer to one request of these paths; ``headers`` by lowercase names,
        ``users``: the accounts that exist."""
        if path == USER and method == "GET":
            return self._user(headers.get("authorization", ""))
        if path == EXCHANGE and method == "POST":
            return self._token(headers, body)
        if path == AUTHORIZE and method == "GET":
            return self._authorize(_params(query.encode()), users, None)
        if path == AUTHORIZE and method == "POST":
            form = _params(body)
            return self._authorize(form, users, form.get("login", ""))
        return Reply(405, b'{"message": "Method Not Allowed"}', dict(_JSON))

    def _authorize(self, p: dict[str, str], users: Collection[str], typed: str | None
                   ) -> Reply:
        client_id, redirect_uri = p.get("client_id", ""), p.get("redirect_uri", "")
        with self.lock:
            self.counters["authorize"] += 1
            known = client_id in self.apps
            auto = self.auto_login
        if not known or not redirect_uri.startswith(("http://", "https://")):
            return Reply(404, b"<h1>No such application</h1>", dict(_HTML))
        back = {"state": p.get("state", "")}
        if "deny" in p:
            return _redirect(redirect_uri, {"error": "access_denied", **back})
        login = typed if typed is not None else auto
        if login is None:
            return Reply(200, _page(p).encode(), dict(_HTML))
        spelled = next((u for u in users if u.lower() == login.lower()), None)
        if spelled is None:
            return Reply(200, _page(p, f"no account {login!r}").encode(), dict(_HTML))
        code = secrets.token_hex(10)
        with self.lock:
            self._codes[code] = _Grant(spelled, client_id, redirect_uri,
                                       time.monotonic() + CODE_TTL_S)
        return _redirect(redirect_uri, {"code": code, **back})

    def _token(self, headers: Mapping[str, str], body: bytes) -> Reply:
        if "json" in headers.get("content-type", ""):
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                doc = {}
            p = {k: str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
        else:
            p = _params(body)
        with self.lock:
            self.counters["token"] += 1
            grant = self._codes.pop(p.get("code", ""), None)
            ok = (grant is not None and self.apps.get(p.get("client_id", "")) ==
                  p.get("client_secret") and grant.client_id == p.get("client_id")
                  and grant.redirect_uri == p.get("redirect_uri", grant.redirect_uri)
                  and grant.expires > time.monotonic())
            token = "gho_" + secrets.token_hex(18)
            if ok and grant is not None:
                self._tokens[token] = grant.login
                self.issued.append(token)
            else:
                self.counters["token_refused"] += 1
        doc = {"access_token": token, "token_type": "bearer", "scope": ""} if ok else {
            "error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired."}
        if "json" in headers.get("accept", ""):
            return Reply(200, json.dumps(doc).encode(), dict(_JSON))
        return Reply(200, urlencode(doc).encode(),
                     {"Content-Type": "application/x-www-form-urlencoded"})

    def _user(self, auth: str) -> Reply:
        scheme, _, token = auth.partition(" ")
        with self.lock:
            self.counters["user"] += 1
            login = self._tokens.get(token.strip()) if scheme.lower() in (
                "bearer", "token") else None
        if login is None:
            return Reply(401, b'{"message": "Requires authentication"}', dict(_JSON))
        doc = {"login": login, "id": 1000 + len(login), "type": "User"}
        return Reply(200, json.dumps(doc).encode(), dict(_JSON))


def _params(raw: bytes) -> dict[str, str]:
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in fields.items()}


def _redirect(uri: str, params: dict[str, str]) -> Reply:
    joiner = "&" if "?" in uri else "?"
    return Reply(302, b"", {"Location": f"{uri}{joiner}{urlencode(params)}"})


def _page(p: dict[str, str], problem: str = "") -> str:
    hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(p.get(k, ""))}">'
                     for k in ("client_id", "redirect_uri", "state"))
    note = f'<p id="problem">{html.escape(problem)}</p>' if problem else ""
    return (f"<!doctype html><title>Authorize application</title><h1>Authorize "
            f"{html.escape(p.get('client_id', ''))}</h1>{note}"
            f'<form method="post" action="{AUTHORIZE}">{hidden}'
            '<label>Sign in as <input name="login" id="login" autocomplete="off"></label> '
            '<button type="submit" id="authorize">Authorize</button> '
            '<button type="submit" name="deny" value="1" id="deny">Cancel</button></form>')
