"""The GitHub stand-in's GraphQL switches and counters (a `Controls` per Forge, as
`forge.graphql`; tests reach it through `forge_graphql.controls(forge)`). What each switch does
to an answer is in forge_graphql.py's docstring."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from bulkbackup.testing.forge_quota import WINDOW_S, RateWindow

DEFAULT_POINTS = 5000  # GitHub's GraphQL budget per token and hour


class Oversize(Enum):
    """How the stand-in answers a batch above `Controls.max_batch` aliases."""

    BAD_GATEWAY = 502
    GATEWAY_TIMEOUT = 504
    RESOURCE_LIMITS = 200  # 200 with an error "Resource limits for this query exceeded."
    STALL = 0  # answered normally, after `Controls.stall_s` (the client's read times out)


class Endless(Enum):
    """A hostile connection: `hasNextPage` is true forever (tests of the client's bounds)."""

    NEW_CURSORS = "new"  # each page a new cursor; past the last repository, the first again
    SAME_CURSOR = "same"  # every next page names the cursor it was asked with


def _points(points: int, window_s: float, endless: bool = False) -> RateWindow:
    return RateWindow(points, window_s, "graphql", endless)


@dataclass
class Controls:
    """The GraphQL side's switches and counters for one Forge (guarded by `forge.lock`)."""

    organizations: set[str] = field(default_factory=set)  # logins served as Organization
    counters: Counter[str] = field(default_factory=Counter)
    max_batch: int | None = None  # more top-level fields than this: answered by `oversize`
    oversize: Oversize = Oversize.BAD_GATEWAY
    stall_s: float = 30.0  # Oversize.STALL: how long such a batch waits (cut short by stop)
    rate_limited: int = 0  # the next N queries: RATE_LIMITED until `limit_reset`
    secondary: int = 0  # the next N queries: 403 with Retry-After
    retry_after_s: int | None = 60  # None: a secondary limit without Retry-After
    fail: int = 0  # the next N queries answer `fail_status`
    fail_status: int = 502
    limit_reset: float = 0.0
    # x-ratelimit-* of `rate_limited` answers: "spent" (remaining 0 until `limit_reset`),
    # "none" (no headers), "stale" (the budget as it stands, points left).
    limit_headers: Literal["spent", "none", "stale"] = "spent"
    budgets: dict[str, RateWindow] = field(default_factory=dict)  # token -> its points
    default: RateWindow = field(
        default_factory=lambda: _points(DEFAULT_POINTS, WINDOW_S, endless=True))
    queries: list[str] = field(default_factory=list)  # every query text received (bounded)
    endless: Endless | None = None  # every repositories connection has a next page, forever
    spent_reset: str | None = None  # set: every query is 403, Remaining 0, this Reset
    require_token: bool = False  # GitHub's 401 without a token (off: tests, demo query without)
    revoke_after: int | None = None  # set: after this many queries, every token is refused

    def set_token_budget(self, token: str, points: int, reset_in_s: float) -> None:
        """Queries with this token may spend `points`, then RATE_LIMITED until the reset,
        when the budget refills for another `reset_in_s`... (as GitHub's hourly window)."""
        self.budgets[token] = _points(points, reset_in_s)
