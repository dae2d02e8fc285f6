"""Sign in with GitHub, public add and a user's history, on a real `bulkbackup serve`.

The GitHub stand-in answers the OAuth endpoints (bulkbackup/testing/oauth.py) and the API
(`GET /user`, `GET /users/<login>`); the test drives the flow over real HTTP (the browser
does it in tests/test_signin_browser.py).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from bulkbackup.queue import history
from tests.helpers import ROOT, stop_serve
from tests.signin_site import (
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN,
    SignInSite,
    start_site,
)


@pytest.fixture(scope="module")
def site(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignInSite]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    served, forge = start_site(tmp_path_factory.mktemp("signin"), redis_server)
    yield SignInSite(served, forge, client)
    stop_serve(served)
    forge.stop()
    client.close()


def cookie_header(response: httpx.Response, name: str) -> str:
    found = [v for v in response.headers.get_list("set-cookie") if v.startswith(name + "=")]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


def sign_in(site: SignInSite, client: httpx.Client, typed: str) -> httpx.Response:
    """/login, the stand-in's authorize form (as ``typed``), back to /login/callback."""
    start = client.get("/login")
    assert start.status_code == 302
    authorize = start.headers["location"]
    assert authorize.startswith(site.forge.url + "/login/oauth/authorize?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert query["client_id"] == CLIENT_ID and len(query["state"]) >= 40
    assert query["redirect_uri"] == site.served.url + "/login/callback"
    granted = httpx.post(site.forge.url + "/login/oauth/authorize",
                         data={**query, "login": typed}, timeout=30)
    assert granted.status_code == 302
    back = granted.headers["location"]
    assert back.startswith(site.served.url + "/login/callback?code=")
    return client.get(back.removeprefix(site.served.url))


def test_sign_in_makes_a_priority_user_and_drops_the_token(site: SignInSite) -> None:
    with httpx.Client(base_url=site.served.url, timeout=30) as client:
        page = client.get("/")
        assert 'href="/login" id="sign-in"' in page.text and "Sign in with GitHub" in page.text
        state_cookie = cookie_header(client.get("/login"), "bb_signin")
        assert "HttpOnly" in state_cookie and "SameSite=lax" in state_cookie
        assert "Path=/" in state_cookie and "Secure" not in state_cookie  # plain http
        done = sign_in(site, client, "octo-cat")  # typed in lower case
        assert done.status_code == 303 and done.headers["location"] == "/users/Octo-Cat"
        session_cookie = cookie_header(done, "bb_session")
        assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
        assert "bb_signin=\"\"" in done.headers["set-cookie"] or any(
            v.startswith("bb_signin=") and "Max-Age=0" in v
            for v in done.headers.get_list("set-cookie"))
        # Tracked as GitHub spells it, never synced, and a priority user due now.
        assert site.r.zscore("tracked", "github.com/Octo-Cat") == float("-inf")
        assert site.r.zscore("bulkbackup:priority", "github.com/Octo-Cat") is not None
        user = client.get("/users/Octo-Cat")
        assert user.status_code == 200
        assert 'id="me">Octo-Cat</a> · priority user' in user.text
        assert 'id="priority"' in user.text
        me = client.get("/api/session").json()
        assert me["login"] == "Octo-Cat" and me["priority"] is True
        # The OAuth token went nowhere: not in a cookie, a page, an answer or the log.
        tokens = list(site.forge.oauth.issued)
        assert len(tokens) == 1
        seen = " ".join([*done.headers.get_list("set-cookie"), user.text, str(me),
                         str(dict(client.cookies)), site.served.log.read_text()])
        assert tokens[0] not in seen and CLIENT_SECRET not in seen
        # The cookie is signed, not encrypted: its payload is all it holds.
        payload = client.cookies["bb_session"].split(".")[0]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert set(decoded) == {"l", "c", "t"} and decoded["l"] == "Octo-Cat"
        assert tokens[0] not in json.dumps(decoded)
        assert "/login/callback?..." in site.served.log.read_text()  # the code not logged
        assert "code=" not in site.served.log.read_text()
        # Signing out needs the session's token.
        refused = client.post("/logout", data={"csrf": "forged"})
        assert refused.status_code == 403 and client.get("/api/session").json()["login"]
        signed_out = client.post("/logout", data={"csrf": me["csrf"]})
        assert signed_out.status_code == 303
        assert client.get("/api/session").json()["login"] is None
        assert 'id="sign-in"' in client.get("/").text


def test_a_forged_or_foreign_state_is_refused(site: SignInSite) -> None:
    asked = site.forge.oauth.counters["token"]
    with httpx.Client(base_url=site.served.url, timeout=30) as client:
        client.get("/login")
        forged = client.get("/login/callback", params={"code": "abc", "state": "forged"})
        assert forged.status_code == 400 and "state mismatch" in forged.text
        assert "bb_session" not in forged.headers.get("set-cookie", "")
    # A flow started by another browser (an attacker's own code and state): this browser
    # has no sign-in cookie, so it is refused too (no login CSRF).
    with httpx.Client(base_url=site.served.url, timeout=30) as attacker:
        start = attacker.get("/login")
        query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
        granted = httpx.post(site.forge.url + "/login/oauth/authorize",
                             data={**query, "login": "dave"}, timeout=30)
        back = granted.headers["location"].removeprefix(site.served.url)
    with httpx.Client(base_url=site.served.url, timeout=30) as victim:
        assert victim.get(back).status_code == 400
        assert victim.get("/api/session").json()["login"] is None
    assert site.forge.oauth.counters["token"] == asked  # no code was ever exchanged
    assert site.r.zscore("bulkbackup:priority", "github.com/dave") is None


def test_cookies_are_secure_behind_tls(site: SignInSite) -> None:
    """X-Forwarded-Proto from a proxy on this machine: https, so the cookies are Secure
    and GitHub is told the https callback."""
    start = httpx.get(site.served.url + "/login", headers={"X-Forwarded-Proto": "https"},
                      timeout=30)
    assert "Secure" in cookie_header(start, "bb_signin")
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert query["redirect_uri"] == [site.served.url.replace("http:", "https:")
                                     + "/login/callback"]


def test_public_add_within_and_beyond_the_rate(site: SignInSite) -> None:
    for key in site.r.scan_iter("bulkbackup:publicadd:*"):
        site.r.delete(key)
    body = {"logins": ["carol-x"]}
    with httpx.Client(base_url=site.served.url, timeout=30) as client:
        assert client.post("/api/users", json=body).status_code == 403  # no session
        page = client.get("/")  # the form's page makes the session
        csrf = re.search(r'id="public-add-csrf" value="([^"]+)"', page.text)
        assert csrf is not None and 'id="public-add-form"' in page.text
        ok = {"X-CSRF-Token": csrf.group(1)}
        assert client.post("/api/users", json=body, headers={"X-CSRF-Token": "x"}
                           ).status_code == 403
        with httpx.Client(base_url=site.served.url, timeout=30) as other:  # no cookie
            assert other.post("/api/users", json=body, headers=ok).status_code == 403
        assert site.r.zscore("tracked", "github.com/Carol-X") is None
        api_before = site.forge.counters["api_user"]
        added = client.post("/api/users", json=body, headers=ok)
        assert added.json() == {"added": ["Carol-X"], "existing": [], "not_found": []}
        assert site.r.zscore("tracked", "github.com/Carol-X") == float("-inf")
        assert site.forge.counters["api_user"] == api_before + 1  # one API call
        gone = client.post("/api/users", json={"logins": ["nobody-here"]}, headers=ok)
        assert gone.json() == {"added": [], "existing": [], "not_found": ["nobody-here"]}
        again = client.post("/api/users", json={"logins": ["CAROL-X"]}, headers=ok)
        assert again.json() == {"added": [], "existing": ["Carol-X"], "not_found": []}
        assert site.forge.counters["api_user"] == api_before + 2  # tracked: no call
        assert client.post("/api/users", json={"logins": ["dave"]}, headers=ok
                           ).json()["added"] == ["dave"]  # the 3rd lookup this hour
        over = client.post("/api/users", json={"logins": ["erin"]}, headers=ok)
        assert over.status_code == 429 and 1 <= int(over.headers["retry-after"]) <= 3600
        assert "at most 3 new logins an hour" in over.json()["error"]
        assert site.r.zscore("tracked", "github.com/erin") is None
        assert site.forge.counters["api_user"] == api_before + 3
        too_many = client.post("/api/users", json={"logins": ["a", "b", "c", "d"]},
                               headers=ok)
        assert too_many.status_code == 400
        # The admin's bearer token is the admin's path, unchanged.
        admin = client.post("/api/users", json={"logins": ["erin"]},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert admin.json() == {"added": ["erin"], "existing": []}
        assert client.post("/api/users", json=body, headers={"Authorization": "Bearer no"}
                           ).status_code == 401
        # The autocomplete: tracked logins by prefix, as spelled.
        assert client.get("/api/logins", params={"prefix": "CAR"}).json() == {
            "logins": ["Carol-X"]}
        assert client.get("/api/logins", params={"prefix": "../x"}).json() == {"logins": []}


def test_a_users_history(site: SignInSite) -> None:
    site.r.zadd("tracked", {"github.com/bob": 1_700_000_000})
    assert site.served.get("/api/users/bob/log").json() == {"login": "bob", "syncs": []}
    assert 'id="no-syncs"' in site.served.get("/users/bob").text
    history.record(site.r, "bob", history.entry(1_700_000_000, 2, 12_345, 0))
    history.record(site.r, "bob", history.entry(1_700_086_400, 0, 0, 1,
                                                "1 of 2 repositories failed: <b>x</b>"))
    doc = site.served.get("/api/users/BOB/log").json()
    assert doc["login"] == "bob" and [s["time"] for s in doc["syncs"]] == [
        "2023-11-15T22:13:20Z", "2023-11-14T22:13:20Z"]
    assert doc["syncs"][1] == {"time": "2023-11-14T22:13:20Z", "repos_changed": 2,
                               "bytes": 12_345, "errors": 0, "error": None, "count": 1,
                               "since": "2023-11-14T22:13:20Z"}
    for day in (2, 3, 4):  # quiet syncs in a row: one row
        history.record(site.r, "bob", history.entry(1_700_000_000 + day * 86_400, 0, 0, 0))
    doc = site.served.get("/api/users/bob/log").json()
    assert len(doc["syncs"]) == 3 and doc["syncs"][0] == {
        "time": "2023-11-18T22:13:20Z", "repos_changed": 0, "bytes": 0, "errors": 0,
        "error": None, "count": 3, "since": "2023-11-16T22:13:20Z"}
    for path in ("/users/bob", "/users/Bob/log"):
        page = site.served.get(path)
        assert page.status_code == 200 and 'id="syncs"' in page.text
        assert "2023-11-15T22:13:20Z" in page.text and "12.3 kB" in page.text
        assert "&lt;b&gt;x&lt;/b&gt;" in page.text  # escaped
        assert "3 syncs since 2023-11-16T22:13:20Z" in page.text
    assert site.served.get("/api/users/nobody-at-all/log").status_code == 404


def test_a_callback_replayed_or_a_tampered_cookie_signs_no_one_in(site: SignInSite) -> None:
    """The stand-in approves at once for `auto_login` (an app already authorized)."""
    with site.forge.oauth.lock:
        site.forge.oauth.auto_login = "bob"
    try:
        with httpx.Client(base_url=site.served.url, timeout=30) as client:
            start = client.get("/login")
            granted = httpx.get(start.headers["location"], timeout=30)
            assert granted.status_code == 302
            back = granted.headers["location"].removeprefix(site.served.url)
            assert client.get(back).status_code == 303
            assert client.get("/api/session").json()["login"] == "bob"
            assert client.get(back).status_code == 400  # its state cookie is spent
            value = client.cookies["bb_session"]
            client.cookies.set("bb_session", value[:-2] + ("A" if value[-2] != "A" else "B")
                               + value[-1])
            assert client.get("/api/session").json()["login"] is None
            # A session value is no sign-in cookie (the cookie's name is in its signature).
            client.cookies.set("bb_signin", value)
            query = parse_qs(urlsplit(start.headers["location"]).query)
            assert client.get("/login/callback", params={
                "code": "x", "state": query["state"][0]}).status_code == 400
    finally:
        with site.forge.oauth.lock:
            site.forge.oauth.auto_login = None


def test_cancelled_on_github(site: SignInSite) -> None:
    with httpx.Client(base_url=site.served.url, timeout=30) as client:
        start = client.get("/login")
        query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
        denied = httpx.post(site.forge.url + "/login/oauth/authorize",
                            data={**query, "deny": "1"}, timeout=30)
        back = denied.headers["location"].removeprefix(site.served.url)
        assert "error=access_denied" in back
        answer = client.get(back)
        assert answer.status_code == 400 and "sign-in cancelled on GitHub" in answer.text


def test_signer_and_addresses() -> None:
    from bulkbackup.web.public_add import address_of
    from bulkbackup.web.session import Signer

    signer = Signer("k")
    value = signer.sign("a", {"x": 1})
    assert signer.unsign("a", value, 60) == {"x": 1, "t": signer.unsign("a", value, 60)["t"]}
    assert signer.unsign("b", value, 60) is None  # another cookie's
    assert Signer("other").unsign("a", value, 60) is None
    assert signer.unsign("a", value, -1) is None  # older than its max age
    assert signer.unsign("a", value + "x", 60) is None and signer.unsign("a", "", 60) is None
    assert address_of("2001:db8:1:2:3:4:5:6") == address_of("2001:db8:1:2::9") == \
        "2001:db8:1:2::/64"
    assert address_of("::ffff:10.0.0.1") == "10.0.0.1" and address_of("10.0.0.2") == "10.0.0.2"


def test_settings_from_the_environment() -> None:
    from bulkbackup import config

    s = config.load(ROOT / "config.yaml", environ={
        "BULKBACKUP_WORKER_HOST": "h", "GITHUB_WEB_URL": "https://ghe.example/",
        "BULKBACKUP_GITHUB_CLIENT_ID": "id1", "BULKBACKUP_GITHUB_CLIENT_SECRET": "sec1",
        "BULKBACKUP_SESSION_SECRET": "sess1"})
    assert s.github.web_url == "https://ghe.example"
    assert (s.serve.github_client_id, s.serve.github_client_secret,
            s.serve.session_secret) == ("id1", "sec1", "sess1")
    assert "sec1" not in repr(s) and "sess1" not in repr(s)
    assert (s.serve.public_add, s.serve.public_add_per_hour) == (False, 10)
    with pytest.raises(config.ConfigError, match=r"github\.web_url must be http"):
        config.load(ROOT / "config.yaml", environ={"BULKBACKUP_WORKER_HOST": "h",
                                                   "GITHUB_WEB_URL": "ftp://x"})
