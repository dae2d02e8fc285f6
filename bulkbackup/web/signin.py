"""Sign in with GitHub: the OAuth web flow's server side (GitHub's "web application flow").

`/login` sends the browser to `<github.web_url>/login/oauth/authorize` with a random `state`
kept in a signed cookie (session.STATE_COOKIE); GitHub sends it back to `/login/callback` with
a code; serve checks the state, exchanges the code at `<web_url>/login/oauth/access_token`,
asks `GET <api_url>/user` for the account's login with that token, and drops the token: it is
never stored, logged or put in a cookie or a page. Both requests are bounded
(http/bounded: github.timeout_s for the whole answer, ANSWER_MAX_BYTES). No scope is asked
for: the login is public.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import orjson
import urllib3

from bulkbackup import __version__
from bulkbackup.config import Settings
from bulkbackup.http.bounded import BoundedPool, Overdue, SlowRead, TooLarge
from bulkbackup.names import is_login

ANSWER_MAX_BYTES = 64 * 1024
CALLBACK_PATH = "/login/callback"


class SignInFailed(Exception):
    """The sign-in could not finish; the message is safe to show (no code, token, secret)."""


@dataclass
class OAuthApp:
    client_id: str
    client_secret: str = field(repr=False)
    web_url: str
    api_url: str
    timeout_s: float
    _http: BoundedPool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = BoundedPool(4, {"User-Agent": f"bulkbackup/{__version__}"})

    @classmethod
    def of(cls, settings: Settings) -> OAuthApp | None:
        """The app serve signs in with; None when sign-in is not configured."""
        s = settings.serve
        if not (s.github_client_id and s.github_client_secret):
            return None
        return cls(s.github_client_id, s.github_client_secret,
                   settings.github.web_url.rstrip("/"), settings.github.api_url.rstrip("/"),
                   settings.github.timeout_s)

    def close(self) -> None:
        self._http.clear()

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = urlencode({"client_id": self.client_id, "redirect_uri": redirect_uri,
                           "state": state, "allow_signup": "false"})
        return f"{self.web_url}/login/oauth/authorize?{query}"

    def login_of(self, code: str, redirect_uri: str) -> str:
        """The login of the account that granted ``code`` (blocking: two requests). The
        token exists only inside this call."""
        body = urlencode({"client_id": self.client_id, "client_secret": self.client_secret,
                          "code": code, "redirect_uri": redirect_uri}).encode()
        status, doc = self._ask("POST", f"{self.web_url}/login/oauth/access_token", {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded"}, body, "the code exchange")
        token = doc.get("access_token")
        if status != 200 or not isinstance(token, str) or not token:
            error = doc.get("error")
            why = error if isinstance(error, str) and error.isascii() else f"HTTP {status}"
            raise SignInFailed(f"GitHub refused the sign-in ({why[:60]}): try again")
        status, user = self._ask("GET", f"{self.api_url}/user", {
            "Accept": "application/vnd.github+json", "Authorization": f"Bearer {token}"},
            None, "GET /user")
        del token  # dropped: the login is all serve keeps
        login = user.get("login")
        if status != 200 or not is_login(login):
            raise SignInFailed(f"GitHub did not name the account (GET /user: HTTP {status})")
        return str(login)

    def _ask(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
             what: str) -> tuple[int, dict[str, object]]:
        """(status, the JSON object answered: {} when it is not one)."""
        try:
            with self._http.open(method, url, headers, body=body, max_bytes=ANSWER_MAX_BYTES,
                                 ends=time.monotonic() + self.timeout_s) as answer:
                status, raw = answer.status, answer.read_all()
        except (Overdue, SlowRead):
            raise SignInFailed(f"GitHub did not answer {what} in time: try again") from None
        except TooLarge:
            raise SignInFailed(f"GitHub's answer to {what} was too large") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise SignInFailed(f"GitHub could not be reached for {what}: try again") from None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        return status, doc if isinstance(doc, dict) else {}
