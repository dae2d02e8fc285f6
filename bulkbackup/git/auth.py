"""Which token git sends, to which host, and how: built by the forge that lists the
repositories (forge/git_auth.py for GitHub) and passed down, so git/ knows no forge.

One rule for both ways of fetching, `git` (gitops.git_env: an extraHeader scoped to the host's
URL) and the increment's fetch (packhttp: the header only to the host's origin): the token
goes only to `host`, only over `schemes`, and never anywhere a redirect points (neither
follows one).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"https": ":443", "http": ":80"}


@dataclass(frozen=True)
class GitAuth:
    host: str = ""  # host[:port], lowercase: the one git host clone URLs may point to
    token: str | None = field(default=None, repr=False)  # None: anonymous
    # The schemes the token may travel over: https only, unless a test/dev setup says
    # otherwise (plain http shows it to anyone on the path).
    schemes: tuple[str, ...] = ("https",)
    user: str = "x-access-token"  # HTTP Basic's user name, the token its password

    def sends_token(self) -> bool:
        return bool(self.token and self.host and self.schemes)

    def basic(self) -> str:
        """The `Authorization` value for the token (HTTP Basic, as git sends it)."""
        assert self.token is not None
        return "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()

    def authorization(self, base_url: str) -> str | None:
        """The token's header for requests under ``base_url`` (`scheme://host[:port]/...`),
        or None: no token, another scheme, or another host than `host`."""
        parts = urlsplit(base_url)
        if not self.sends_token() or parts.scheme not in self.schemes:
            return None
        if _origin(parts.scheme, parts.netloc) != _origin(parts.scheme, self.host):
            return None
        return self.basic()


ANONYMOUS = GitAuth()


def _origin(scheme: str, netloc: str) -> str:
    return netloc.lower().removesuffix(_DEFAULT_PORTS.get(scheme, ""))
