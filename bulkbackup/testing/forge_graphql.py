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

Switches and counters live in `controls(forge)` (a `Controls`, forge_graphql_controls.py,
guarded by `forge.lock`):
RATE_LIMITED answers (200 with an error of type RATE_LIMITED), secondary limits (403 with
Retry-After), 5xx on demand, an answer for batches larger than `max_batch` aliases (502, 504,
a "resource limits" error or a stall, to exercise splitting), per-token point budgets, and
hostile answers as the REST side's `api_*` switches: endless pages (`endless`), a spent limit
whose reset is already past (`spent_reset`), 401 for a query without a token
(`require_token`, as GitHub), for an unknown token (`forge.require_known_tokens`: the tokens
of `budgets` are known) and for every token after some queries (`revoke_after`); `counters`
has "requests", "points", "connections" (GitHub's connection requests), "status_<code>",
"rate_limited", "secondary", "oversize", and "after_spent": queries with a budgeted token
after an answer had said its points were spent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from functools import cache
from pathlib import Path
from typing import Any

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

from bulkbackup.testing.forge_graphql_controls import Controls, Oversize
from bulkbackup.testing.forge_graphql_data import MAX_PAGE, Context, NotFound, root
from bulkbackup.testing.forge_quota import token_of
from bulkbackup.testing.forge_state import ForgeState

# Controls and Oversize are re-exported: tests and benchmarks name them through this module.
__all__ = ["Answer", "Controls", "Cost", "Oversize", "PaginationError", "answer", "controls",
           "query_cost", "schema", "top_level_fields"]

SCHEMA_FILE = Path(__file__).with_name("github_schema.graphql")
_JSON = {"Content-Type": "application/json; charset=utf-8"}


@cache
def schema() -> GraphQLSchema:
    return build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))


def controls(forge: ForgeState) -> Controls:
    """The GraphQL switches and counters of `forge`."""
    return forge.graphql


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


def answer(forge: ForgeState, headers: Message, body: bytes, netloc: str) -> Answer:
    """The answer to one `POST /graphql` (called by the stand-in's request handler)."""
    c = controls(forge)
    auth = headers.get("Authorization", "")
    with forge.lock:
        c.counters["requests"] += 1
        if auth:
            forge.auth_headers_seen.append(auth)
        unauthorized = _unauthorized(c, forge, token_of(auth))
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


def _status(c: Controls, forge: ForgeState, status: int, payload: dict[str, Any],
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


def _unauthorized(c: Controls, forge: ForgeState, token: str) -> str | None:
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
    budget = c.budgets.get(token_of(auth))
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
    points.spend(cost.points, now)  # the default budget is never exhausted: RateWindow.endless
    c.counters["points"] += cost.points
    c.counters["connections"] += cost.requests  # what the points were reckoned from
    return points.headers(), (points.full, points.remaining, points.reset_at)
