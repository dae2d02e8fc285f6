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
Retry-After), 5xx on demand, an answer for batches larger than `max_batch` aliases (502, 504
or a "resource limits" error, to exercise splitting), per-token point budgets; `counters`
has "requests", "points", "status_<code>", "rate_limited", "secondary", "oversize".
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from enum import Enum
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

from bulkbackup.testing.forge import PLACEHOLDER, Forge, rfc3339

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


@dataclass
class Points:
    remaining: int
    reset_at: float
    full: int

    def refill_if_due(self, now: float) -> None:
        if now >= self.reset_at:
            self.remaining, self.reset_at = self.full, now + WINDOW_S

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
    rate_limited: int = 0  # the next N queries: RATE_LIMITED until `limit_reset`
    secondary: int = 0  # the next N queries: 403 with Retry-After
    retry_after_s: int | None = 60  # None: a secondary limit without Retry-After
    fail: int = 0  # the next N queries answer `fail_status`
    fail_status: int = 502
    limit_reset: float = 0.0
    budgets: dict[str, Points] = field(default_factory=dict)  # token -> its points
    default: Points = field(
        default_factory=lambda: Points(DEFAULT_POINTS, time.time() + WINDOW_S, DEFAULT_POINTS))
    queries: list[str] = field(default_factory=list)  # every query text received (bounded)

    def set_token_budget(self, token: str, points: int, reset_in_s: float) -> None:
        """Queries with this token may spend `points`, then RATE_LIMITED until the reset,
        when the budget refills for another `reset_in_s`... (as GitHub's hourly window)."""
        self.budgets[token] = Points(points, time.time() + reset_in_s, points)


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
    for arg in node.arguments:
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


class _NotFound(Exception):
    """An unknown login: the alias is null and its error has type NOT_FOUND (as GitHub)."""


@dataclass
class _Context:
    forge: Forge
    controls: Controls
    netloc: str
    cost: Cost
    points: tuple[int, int, float]  # full, remaining, reset_at after this query's charge


def answer(forge: Forge, headers: Message, body: bytes, netloc: str) -> Answer:
    """The answer to one `POST /graphql` (called by the stand-in's request handler)."""
    c = controls(forge)
    auth = headers.get("Authorization", "")
    with forge.lock:
        c.counters["requests"] += 1
        if auth:
            forge.auth_headers_seen.append(auth)
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
    with forge.lock:
        refused = _admit(c, auth, cost, top_level_fields(document))
        if isinstance(refused, Answer):
            c.counters[f"status_{refused.status}"] += 1
            return refused
        limits, points = refused
    ctx = _Context(forge, c, netloc, cost, points)
    result = execute(schema(), document, root_value=_root(ctx), variable_values=variables)
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
            if isinstance(err.original_error, _NotFound):
                item["type"] = "NOT_FOUND"
            errors.append(item)
        out["errors"] = errors
    out["data"] = result.data
    return out


def _token(auth: str) -> str:
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() in ("token", "bearer") else ""


def _admit(c: Controls, auth: str, cost: Cost, fields: int
           ) -> Answer | tuple[dict[str, str], tuple[int, int, float]]:
    """Switches, limits and the charge for one valid query (lock held): a refusal, or the
    rate-limit headers and (limit, remaining, reset) after charging."""
    now = time.time()
    if c.fail > 0:
        c.fail -= 1
        return Answer(c.fail_status, b'{"message": "Server Error"}', dict(_JSON))
    if c.max_batch is not None and fields > c.max_batch:
        c.counters["oversize"] += 1
        if c.oversize is Oversize.RESOURCE_LIMITS:
            body = {"errors": [{"type": "RESOURCE_LIMITS_EXCEEDED",
                                "message": "Resource limits for this query exceeded."}]}
            return Answer(200, json.dumps(body).encode(), dict(_JSON))
        return Answer(c.oversize.value, b'{"message": "We couldn\'t respond to your request '
                                        b'in time. Sorry about that."}', dict(_JSON))
    budget = c.budgets.get(_token(auth))
    points = budget or c.default
    points.refill_if_due(now)
    if c.secondary > 0:
        c.secondary -= 1
        c.counters["secondary"] += 1
        extra = {} if c.retry_after_s is None else {"Retry-After": str(c.retry_after_s)}
        body = b'{"message": "You have exceeded a secondary rate limit. Please wait a few ' \
               b'minutes before you try again."}'
        return Answer(403, body, {**points.headers(), **extra, **_JSON})
    limited = c.rate_limited > 0 and now < c.limit_reset
    if limited or (budget is not None and points.remaining < cost.points):
        if limited:
            c.rate_limited -= 1
        c.counters["rate_limited"] += 1
        headers = points.headers()  # a budget short of this query's cost: as it stands
        if limited:
            headers.update({"X-RateLimit-Remaining": "0",
                            "X-RateLimit-Reset": str(math.ceil(c.limit_reset))})
        body = {"errors": [{"type": "RATE_LIMITED", "code": "graphql_rate_limit",
                            "message": "API rate limit exceeded for user ID 1."}]}
        return Answer(200, json.dumps(body).encode(), {**headers, **_JSON})
    if points.remaining < cost.points:  # the default budget is never exhausted: a new window
        points.remaining, points.reset_at = points.full, now + WINDOW_S
    points.remaining -= cost.points
    c.counters["points"] += cost.points
    return points.headers(), (points.full, points.remaining, points.reset_at)


# -- content -----------------------------------------------------------------------------------


def _root(ctx: _Context) -> dict[str, Callable[..., Any]]:
    def owner(info: Any, login: str) -> dict[str, Any]:
        return _owner(ctx, login, "RepositoryOwner")

    def user(info: Any, login: str) -> dict[str, Any]:
        return _owner(ctx, login, "User")

    def organization(info: Any, login: str) -> dict[str, Any]:
        return _owner(ctx, login, "Organization")

    def repository(info: Any, owner: str, name: str, followRenames: bool = True  # noqa: N803
                   ) -> dict[str, Any] | None:
        return _find_repo(ctx, _owner(ctx, owner, "RepositoryOwner"), name)

    def rate_limit(info: Any, dryRun: bool = False) -> dict[str, Any]:  # noqa: N803
        full, remaining, reset_at = ctx.points
        return {"cost": ctx.cost.points, "limit": full, "nodeCount": ctx.cost.nodes,
                "remaining": remaining, "used": full - remaining, "resetAt": rfc3339(reset_at)}

    return {"repositoryOwner": owner, "user": user, "organization": organization,
            "repository": repository, "rateLimit": rate_limit}


def _owner(ctx: _Context, login: str, wanted: str) -> dict[str, Any]:
    with ctx.forge.lock:
        known = login in ctx.forge.users
        kind = "Organization" if login in ctx.controls.organizations else "User"
    if not known or wanted not in ("RepositoryOwner", kind):
        raise _NotFound(f"Could not resolve to a{'n' if wanted[0] in 'AEIOU' else ''} "
                        f"{wanted} with the login of '{login}'.")
    base = f"http://{ctx.netloc}"
    out: dict[str, Any] = {
        "__typename": kind, "id": _node_id(kind[0], login), "login": login,
        "url": f"{base}/{login}", "resourcePath": f"/{login}",
        "avatarUrl": lambda info, size=None: f"{base}/{login}.png",
    }
    out["repositories"] = lambda info, **args: _connection(ctx, out, args)
    out["repository"] = lambda info, name, followRenames=True: _find_repo(ctx, out, name)
    return out


def _node_id(prefix: str, text: str) -> str:
    return prefix + "_" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _entries(ctx: _Context, login: str) -> list[dict[str, Any]]:
    with ctx.forge.lock:
        return list(ctx.forge.users.get(login) or [])


def _find_repo(ctx: _Context, owner: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in _entries(ctx, owner["login"]):
        if entry.get("name") == name:
            return _repo(ctx, entry, owner)
    raise _NotFound(f"Could not resolve to a Repository with the name "
                    f"'{owner['login']}/{name}'.")


_ORDER_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "CREATED_AT": lambda e: str(e.get("created_at") or ""),
    "NAME": lambda e: str(e.get("name") or "").lower(),
    "PUSHED_AT": lambda e: str(e.get("pushed_at") or ""),
    "UPDATED_AT": lambda e: str(e.get("updated_at") or ""),
    "STARGAZERS": lambda e: int(e.get("stargazers_count") or 0),
}


def _selected(entries: list[dict[str, Any]], args: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The owner's repositories the arguments select, in the asked order (the stand-in's
    repositories are all owned by their owner: no COLLABORATOR or member ones)."""
    owned = args.get("ownerAffiliations")
    if owned is not None and "OWNER" not in owned:
        return []
    out = [e for e in entries
           if (args.get("isFork") is None or bool(e.get("fork")) == args["isFork"])
           and (args.get("isArchived") is None or bool(e.get("archived")) == args["isArchived"])
           and (args.get("privacy") is None
                or ("PRIVATE" if e.get("private") else "PUBLIC") == args["privacy"])
           and (args.get("visibility") is None
                or str(e.get("visibility", "")).upper() == args["visibility"])]
    order = args.get("orderBy")
    if order:
        out.sort(key=_ORDER_KEYS[order["field"]], reverse=order["direction"] == "DESC")
    return out


def _cursor(index: int) -> str:
    return base64.b64encode(f"cursor:v2:{index}".encode()).decode()


def _position(cursor: str) -> int:
    try:
        text = base64.b64decode(cursor.encode(), validate=True).decode()
        if text.startswith("cursor:v2:"):
            return int(text.removeprefix("cursor:v2:"))
    except ValueError:
        pass
    raise GraphQLError(f"`{cursor}` does not appear to be a valid cursor.")


def _connection(ctx: _Context, owner: dict[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    repos = _selected(_entries(ctx, owner["login"]), args)
    start, end = 0, len(repos)
    if args.get("after") is not None:
        start = max(start, _position(args["after"]) + 1)
    if args.get("before") is not None:
        end = min(end, _position(args["before"]))
    if args.get("first") is not None:
        end = min(end, start + args["first"])
    if args.get("last") is not None:
        start = max(start, end - args["last"])
    window = range(start, max(start, end))
    nodes = [_repo(ctx, repos[i], owner) for i in window]
    sizes = sum(e.get("size") or 0 for e in repos if isinstance(e.get("size"), int))
    return {
        "nodes": nodes,
        "edges": [{"cursor": _cursor(i), "node": n} for i, n in zip(window, nodes, strict=True)],
        "pageInfo": {"hasNextPage": window.stop < len(repos), "hasPreviousPage": start > 0,
                     "startCursor": _cursor(window.start) if nodes else None,
                     "endCursor": _cursor(window.stop - 1) if nodes else None},
        "totalCount": len(repos), "totalDiskUsage": min(sizes, 2**31 - 1),
    }


def _repo(ctx: _Context, e: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """One REST listing entry as a GraphQL Repository (the REST side serves the same entry)."""
    name, full = e.get("name"), e.get("full_name")
    empty = _is_empty(ctx.forge, owner["login"], name)
    branch = e.get("default_branch")
    return {
        "__typename": "Repository", "id": e.get("node_id"), "databaseId": e.get("id"),
        "name": name, "nameWithOwner": full, "description": e.get("description"),
        "isFork": e.get("fork"), "isPrivate": e.get("private"),
        "isArchived": e.get("archived", False), "isDisabled": e.get("disabled", False),
        "isEmpty": empty, "isLocked": False, "isMirror": False, "isTemplate": False,
        "pushedAt": e.get("pushed_at"), "updatedAt": e.get("updated_at"),
        "createdAt": e.get("created_at"), "archivedAt": None, "diskUsage": e.get("size"),
        "url": str(e.get("html_url", "")).replace(PLACEHOLDER, ctx.netloc),
        "resourcePath": f"/{full}", "homepageUrl": None, "stargazerCount": 0, "forkCount": 0,
        "visibility": "PRIVATE" if e.get("private") else "PUBLIC",
        # GitHub has no default branch ref before the first push.
        "defaultBranchRef": None if empty or branch is None else {
            "id": _node_id("REF", f"{full}:{branch}"), "name": branch, "prefix": "refs/heads/"},
        "owner": owner,
    }


def _is_empty(forge: Forge, login: str, name: object) -> bool:
    """A repository with no refs (a listed repository with nothing behind it is not empty:
    GitHub would list it with its default branch and fail the clone)."""
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        return False
    repo = forge.git_root / login / f"{name}.git"
    if not repo.is_dir():
        return False
    heads = repo / "refs" / "heads"
    if heads.is_dir() and any(p.is_file() for p in heads.rglob("*")):
        return False
    packed = repo / "packed-refs"
    if packed.is_file() and any(line[:1] not in (b"#", b"^", b"")
                                for line in packed.read_bytes().splitlines()):
        return False
    return True
