"""The GitHub stand-in's GraphQL side: `POST /graphql` (and GitHub Enterprise's `/api/graphql`).

Every query is parsed, validated and executed by graphql-core against `github_schema.graphql`,
a subset of GitHub's public schema copied verbatim (see its header): a field or argument that
does not exist on github.com fails here too. Content comes from `Forge.users`, the same
entries the REST side lists, so both APIs describe the same repositories.

Points are charged by GitHub's published rule (docs.github.com, "Rate limits and query limits
for the GraphQL API"), implemented by `query_cost`:
- each connection field (a field whose type is a `...Connection`) needs as many requests as
  the product of the `first`/`last` of the connections around it (1 at the top level);
- the requests of all connections are added up, divided by 100 and rounded half up;
- the cost is at least 1.
So 100 aliases `repositoryOwner(login:) { repositories(first: 100) {...} }` cost 1 point, 150
cost 2, 250 cost 3 (2.5 rounds up). `first`/`last` are required on connections and at most
100, as on github.com. Invalid queries are answered without charging.

Switches and counters live in `controls(forge)` (a `Controls`, guarded by `forge.lock`):
RATE_LIMITED answers (200 with an error of type RATE_LIMITED), secondary limits (403 with
Retry-After), 5xx on demand, an answer for batches larger than `max_batch` aliases (502, 504,
a "resource limits" error or a stall, to exercise splitting), per-token point budgets, and
hostile answers as the REST side's `api_*` switches: endless pages (`endless`), a spent limit
whose reset is already past (`spent_reset`), 401 for a query without a token
(`require_token`, as GitHub), for an unknown token (`forge.require_known_tokens`: the tokens
of `budgets` are known) and for every token after some queries (`revoke_after`); `counters`
has "requests", "points", "status_<code>", "rate_limited", "secondary", "oversize", and
"after_spent": queries with a budgeted token after an answer had said its points were spent.
"""

from __future__ import annotations

import json
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Literal

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    build_schema,
    execute,
    parse,
    validate,
)

from bulkbackup.testing.forge import Forge
from bulkbackup.testing.forge_graphql_data import Context, Endless, NotFound, root

SCHEMA_FILE = Path(__file__).with_name("github_schema.graphql")
DEFAULT_POINTS = 5000  # GitHub's GraphQL budget per token and hour
WINDOW_S = 3600.0
MAX_PAGE = 100
_JSON = {"Content-Type": "application/json; charset=utf-8"}


@cache
def schema() -> GraphQLSchema:
    return build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))


class Oversize(Enum):
    """How the stand-in answers a batch above `Controls.max_batch` aliases."""

    BAD_GATEWAY = 502
    GATEWAY_TIMEOUT = 504
    RESOURCE_LIMITS = 200  # 200 with an error "Resource limits for this query exceeded."
    STALL = 0  # answered normally, after `Controls.stall_s` (the client's read times out)


@dataclass
class Points:
    remaining: int
    reset_at: float
    full: int
    told_spent: bool = False  # an answer of this window said remaining 0
    window_s: float = WINDOW_S

    def refill_if_due(self, now: float) -> None:
        if now >= self.reset_at:
            self.remaining, self.reset_at = self.full, now + self.window_s
            self.told_spent = False

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.full), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Used": str(self.full - self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
                "X-RateLimit-Resource": "graphql"}


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
    budgets: dict[str, Points] = field(default_factory=dict)  # token -> its points
    default: Points = field(
        default_factory=lambda: Points(DEFAULT_POINTS, time.time() + WINDOW_S, DEFAULT_POINTS))
    queries: list[str] = field(default_factory=list)  # every query text received (bounded)
    endless: Endless | None = None  # every repositories connection has a next page, forever
    spent_reset: str | None = None  # set: every query is 403, Remaining 0, this Reset
    require_token: bool = False  # GitHub's 401 without a token (off: tests, demo query without)
    revoke_after: int | None = None  # set: after this many queries, every token is refused

    def set_token_budget(self, token: str, points: int, reset_in_s: float) -> None:
        """Queries with this token may spend `points`, then RATE_LIMITED until the reset,
        when the budget refills for another `reset_in_s`... (as GitHub's hourly window)."""
        self.budgets[token] = Points(points, time.time() + reset_in_s, points,
                                     window_s=reset_in_s)


_CONTROLS: weakref.WeakKeyDictionary[Forge, Controls] = weakref.WeakKeyDictionary()
_CONTROLS_LOCK = threading.Lock()


def controls(forge: Forge) -> Controls:
    """The GraphQL switches and counters of `forge` (created on first use)."""
    with _CONTROLS_LOCK:
        found = _CONTROLS.get(forge)
        if found is None:
            found = _CONTROLS[forge] = Controls()
        return found


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Cost:
    requests: int  # connection requests, by GitHub's rule
    nodes: int  # most nodes the query may return
    points: int


class PaginationError(Exception):
    """A connection without `first`/`last`, or with more than 100."""


def query_cost(document: DocumentNode, variables: Mapping[str, Any]) -> Cost:
    """Points by GitHub's published rule (module docstring); raises PaginationError."""
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    totals = [0, 0]  # requests, nodes
    for op in document.definitions:
        if isinstance(op, OperationDefinitionNode):
            _walk(op.selection_set, 1, fragments, variables, totals, schema().query_type)
    requests, nodes = totals
    return Cost(requests, nodes, max(1, math.floor(requests / 100 + 0.5)))


def _walk(sel: SelectionSetNode | None, parents: int, fragments: dict[str, FragmentDefinitionNode],
          variables: Mapping[str, Any], totals: list[int], parent_type: Any) -> None:
    if sel is None:
        return
    for node in sel.selections:
        if isinstance(node, FragmentSpreadNode):
            frag = fragments.get(node.name.value)
            if frag is not None:
                _walk(frag.selection_set, parents, fragments, variables, totals,
                      schema().get_type(frag.type_condition.name.value))
        elif isinstance(node, InlineFragmentNode):
            cond = node.type_condition
            kind = schema().get_type(cond.name.value) if cond else parent_type
            _walk(node.selection_set, parents, fragments, variables, totals, kind)
        elif isinstance(node, FieldNode):
            fdef = getattr(parent_type, "fields", {}).get(node.name.value)
            ftype = _named(fdef.type) if fdef is not None else None
            inner = parents
            if ftype is not None and ftype.name.endswith("Connection"):
                size = _page_size(node, variables)
                totals[0] += parents
                totals[1] += parents * size
                inner = parents * size
            _walk(node.selection_set, inner, fragments, variables, totals, ftype)


def _named(kind: Any) -> Any:
    while hasattr(kind, "of_type"):
        kind = kind.of_type
    return kind


def _page_size(node: FieldNode, variables: Mapping[str, Any]) -> int:
    values: dict[str, Any] = {}
    # graphql-core 3.3 leaves `arguments` None on a field written without any (3.2: empty).
    for arg in node.arguments or ():
        if arg.name.value in ("first", "last"):
            v = arg.value
            if isinstance(v, IntValueNode):
                values[arg.name.value] = int(v.value)
            elif isinstance(v, VariableNode):
                values[arg.name.value] = variables.get(v.name.value)
    given = [v for v in values.values() if v is not None]
    name = node.name.value
    if not given:
        raise PaginationError(f"You must provide a `first` or `last` value to properly "
                              f"paginate the `{name}` connection.")
    for key, v in values.items():
        if isinstance(v, int) and not 0 <= v <= MAX_PAGE:
            raise PaginationError(f"Requesting {v} records on the `{name}` connection exceeds "
                                  f"the `{key}` limit of {MAX_PAGE} records.")
    return max(int(v) for v in given)


def top_level_fields(document: DocumentNode) -> int:
    """The batch size of a query: its top-level fields but `rateLimit` and `__typename`."""
    return sum(1 for op in document.definitions if isinstance(op, OperationDefinitionNode)
               for f in op.selection_set.selections
               if not (isinstance(f, FieldNode) and f.name.value in ("rateLimit", "__typename")))


# -- answering ---------------------------------------------------------------------------------


def answer(forge: Forge, headers: Message, body: bytes, netloc: str) -> Answer:
    """The answer to one `POST /graphql` (called by the stand-in's request handler)."""
    c = controls(forge)
    auth = headers.get("Authorization", "")
    with forge.lock:
        c.counters["requests"] += 1
        if auth:
            forge.auth_headers_seen.append(auth)
        unauthorized = _unauthorized(c, forge, _token(auth))
    if unauthorized is not None:
        return _status(c, forge, 401, {"message": unauthorized,
                                       "documentation_url": "https://docs.github.com/graphql"}, {})
    try:
        request = json.loads(body)
    except ValueError:
        return _status(c, forge, 400, {"message": "Problems parsing JSON"}, {})
    query = request.get("query") if isinstance(request, dict) else None
    variables = request.get("variables") if isinstance(request, dict) else None
    if not isinstance(query, str) or not isinstance(variables or {}, dict):
        return _status(c, forge, 400, {"message": "A query attribute must be specified and "
                                                  "must be a string."}, {})
    with forge.lock:
        if len(c.queries) < 10_000:
            c.queries.append(query)
    try:
        document = parse(query)
    except GraphQLError as exc:
        return _status(c, forge, 200, {"errors": [exc.formatted]}, {})
    invalid = validate(schema(), document)
    if invalid:
        return _status(c, forge, 200, {"errors": [e.formatted for e in invalid]}, {})
    try:
        cost = query_cost(document, variables or {})
    except PaginationError as exc:
        return _status(c, forge, 200, {"errors": [{"type": "MISSING_PAGINATION_BOUNDARIES",
                                                   "message": str(exc)}]}, {})
    fields = top_level_fields(document)
    with forge.lock:
        stall = c.oversize is Oversize.STALL and c.max_batch is not None and fields > c.max_batch
        if stall:
            c.counters["oversize"] += 1
    if stall and forge._stopping.wait(c.stall_s):
        return Answer(503, b"", {})
    with forge.lock:
        refused = _admit(c, auth, cost, fields)
        if isinstance(refused, Answer):
            c.counters[f"status_{refused.status}"] += 1
            return refused
        limits, points = refused
    with forge.lock:
        organizations = frozenset(c.organizations)
        endless = c.endless
    ctx = Context(forge, organizations, netloc, (cost.points, cost.nodes), points, endless)
    result = execute(schema(), document, root_value=root(ctx), variable_values=variables)
    assert isinstance(result, ExecutionResult)  # no async resolvers
    return _status(c, forge, 200, _result(result), limits)


def _status(c: Controls, forge: Forge, status: int, payload: dict[str, Any],
            headers: dict[str, str]) -> Answer:
    with forge.lock:
        c.counters[f"status_{status}"] += 1
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Answer(status, body, {**headers, **_JSON})


def _result(result: ExecutionResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if result.errors:
        errors = []
        for err in result.errors:
            item = dict(err.formatted)
            if isinstance(err.original_error, NotFound):
                item["type"] = "NOT_FOUND"
            errors.append(item)
        out["errors"] = errors
    out["data"] = result.data
    return out


def _token(auth: str) -> str:
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() in ("token", "bearer") else ""


def _unauthorized(c: Controls, forge: Forge, token: str) -> str | None:
    """GitHub's message when the query's credentials are refused (401), else None."""
    if not token:
        return "This endpoint requires you to be authenticated." if c.require_token else None
    if forge.require_known_tokens and token not in c.budgets:
        return "Bad credentials"
    if c.revoke_after is not None and c.counters["requests"] > c.revoke_after:
        return "Bad credentials"
    return None


def _admit(c: Controls, auth: str, cost: Cost, fields: int
           ) -> Answer | tuple[dict[str, str], tuple[int, int, float]]:
    """Switches, limits and the charge for one valid query (lock held): a refusal, or the
    rate-limit headers and (limit, remaining, reset) after charging."""
    now = time.time()
    if c.fail > 0:
        c.fail -= 1
        return Answer(c.fail_status, b'{"message": "Server Error"}', dict(_JSON))
    if c.max_batch is not None and fields > c.max_batch and c.oversize is not Oversize.STALL:
        c.counters["oversize"] += 1
        if c.oversize is Oversize.RESOURCE_LIMITS:
            limits = {"errors": [{"type": "RESOURCE_LIMITS_EXCEEDED",
                                  "message": "Resource limits for this query exceeded."}]}
            return Answer(200, json.dumps(limits).encode(), dict(_JSON))
        return Answer(c.oversize.value, b'{"message": "We couldn\'t respond to your request '
                                        b'in time. Sorry about that."}', dict(_JSON))
    budget = c.budgets.get(_token(auth))
    points = budget or c.default
    points.refill_if_due(now)
    if budget is not None and budget.told_spent:
        # Sent although an answer had already said this token's points were spent.
        c.counters["after_spent"] += 1
    if c.spent_reset is not None:
        return Answer(403, b'{"message": "API rate limit exceeded for user ID 1."}', {
            **points.headers(), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": c.spent_reset,
            **_JSON})
    if c.secondary > 0:
        c.secondary -= 1
        c.counters["secondary"] += 1
        extra = {} if c.retry_after_s is None else {"Retry-After": str(c.retry_after_s)}
        text = b'{"message": "You have exceeded a secondary rate limit. Please wait a few ' \
               b'minutes before you try again."}'
        return Answer(403, text, {**points.headers(), **extra, **_JSON})
    limited = c.rate_limited > 0 and now < c.limit_reset
    if limited or (budget is not None and points.remaining < cost.points):
        if limited:
            c.rate_limited -= 1
        c.counters["rate_limited"] += 1
        headers = points.headers()  # a budget short of this query's cost: as it stands
        if limited and c.limit_headers == "spent":
            headers.update({"X-RateLimit-Remaining": "0",
                            "X-RateLimit-Reset": str(math.ceil(c.limit_reset))})
        elif limited and c.limit_headers == "none":
            headers = {}
        if budget is not None and headers.get("X-RateLimit-Remaining") == "0":
            budget.told_spent = True
        refusal = {"errors": [{"type": "RATE_LIMITED", "code": "graphql_rate_limit",
                               "message": "API rate limit exceeded for user ID 1."}]}
        return Answer(200, json.dumps(refusal).encode(), {**headers, **_JSON})
    if points.remaining < cost.points:  # the default budget is never exhausted: a new window
        points.remaining, points.reset_at = points.full, now + WINDOW_S
    points.remaining -= cost.points
    points.told_spent = points.remaining == 0
    if budget is None and points.remaining == 0:  # never said to be exhausted either
        points.remaining, points.reset_at = points.full, now + WINDOW_S
    c.counters["points"] += cost.points
    return points.headers(), (points.full, points.remaining, points.reset_at)
