"""A serve with sign-in and public add over the stand-in's OAuth app, for tests/test_signin*.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from bulkbackup.testing.forge import Forge, RepoSpec
from tests.helpers import SERVE_TOKEN as TOKEN
from tests.helpers import Served, base_env, start_serve

CLIENT_ID, CLIENT_SECRET = "client-for-tests", "oauth-secret-for-tests"
SESSION_SECRET = "session-secret-for-tests"
PER_HOUR = 3


@dataclass
class SignInSite:
    served: Served
    forge: Forge
    r: redis.Redis


def start_site(tmp: Path, redis_url: str) -> tuple[Served, Forge]:
    """A stand-in with accounts Octo-Cat, Carol-X, dave, erin, bob (and an OAuth app), and
    serve with sign-in and public add (PER_HOUR an hour) over an empty local store."""
    forge = Forge(tmp / "forge").start()
    for login in ("Octo-Cat", "Carol-X", "dave", "erin", "bob"):
        forge.add_user(login, [RepoSpec("hello")])
    forge.oauth.add_app(CLIENT_ID, CLIENT_SECRET)
    store = tmp / "backup" / "github.com"
    store.mkdir(parents=True)
    env = base_env(tmp, redis_url, str(store))
    cfg = Path(env["BULKBACKUP_CONFIG"])
    cfg.write_text(cfg.read_text() + f"serve:\n  public_add: true\n"
                   f"  public_add_per_hour: {PER_HOUR}\n")
    env.update(GITHUB_API_URL=forge.url, GITHUB_WEB_URL=forge.url,
               BULKBACKUP_GITHUB_CLIENT_ID=CLIENT_ID,
               BULKBACKUP_GITHUB_CLIENT_SECRET=CLIENT_SECRET,
               BULKBACKUP_SESSION_SECRET=SESSION_SECRET, BULKBACKUP_ADMIN_TOKEN=TOKEN)
    return start_serve(env, tmp / "serve.log"), forge
