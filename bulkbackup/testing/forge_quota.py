"""The stand-in's rate window: one quota of GitHub's (a token's REST requests, or its GraphQL
points) and the `X-RateLimit-*` headers that describe it. The REST side (forge_state.py) and
the GraphQL side (forge_graphql.py) each keep one per budgeted token and a default one."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

WINDOW_S = 3600.0  # GitHub's rate-limit window


@dataclass
class RateWindow:
    """`full` units (requests or points) per `window_s`, refilled at `reset_at`.

    `endless`: the quota of requests without a budgeted token: reported, never exhausted, and
    never said to be (a client that believes the headers, as the quota broker does, would
    otherwise wait for a reset an hour away)."""

    full: int
    window_s: float
    resource: str  # X-RateLimit-Resource: "core" (REST) or "graphql"
    endless: bool = False
    remaining: int = field(init=False)
    reset_at: float = field(init=False)
    told_spent: bool = field(default=False, init=False)  # an answer of this window said 0 left

    def __post_init__(self) -> None:
        self.remaining, self.reset_at = self.full, time.time() + self.window_s

    def refill_if_due(self, now: float) -> None:
        if now >= self.reset_at:
            self._refill(now)

    def spend(self, cost: int, now: float) -> None:
        """Charge `cost` (a budgeted caller has checked it is left: an endless window short
        of it starts a new window)."""
        if self.remaining < cost:
            self._refill(now)
        self.remaining -= cost
        self.told_spent = self.remaining == 0
        if self.endless and self.remaining == 0:
            self._refill(now)

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.full), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
                "X-RateLimit-Used": str(self.full - self.remaining),
                "X-RateLimit-Resource": self.resource}

    def _refill(self, now: float) -> None:
        self.remaining, self.reset_at, self.told_spent = self.full, now + self.window_s, False


def token_of(authorization: str) -> str:
    """The token of an `Authorization` header (`token X` or `Bearer X`), or ""."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() in ("token", "bearer") else ""
