"""The content of the stand-in's GraphQL answers: owners, repository connections and
repositories built from `Forge.users` (the entries the REST side lists), as the resolvers of
`github_schema.graphql` (graphql-core's default resolver reads dict keys and calls callables).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError

from bulkbackup.testing import forge_gists as gists
from bulkbackup.testing.forge_graphql_controls import Endless
from bulkbackup.testing.forge_state import ForgeState
from bulkbackup.testing.repos import PLACEHOLDER, rfc3339

__all__ = ["MAX_PAGE", "Context", "Endless", "NotFound", "root"]  # Endless: tests import it here

MAX_PAGE = 100  # the most a connection's `first`/`last` may ask (as github.com)


class NotFound(Exception):
    """An unknown login: the alias is null and its error has type NOT_FOUND (as GitHub)."""


@dataclass
class Context:
    """What one query's resolvers see."""

    forge: ForgeState
    organizations: frozenset[str]  # logins served as Organization
    netloc: str
    cost: tuple[int, int]  # points, nodes
    points: tuple[int, int, float]  # limit, remaining, reset_at after this query's charge
    endless: Endless | None = None


def root(ctx: Context) -> dict[str, Callable[..., Any]]:
    def owner(info: Any, login: str) -> dict[str, Any]:
        return _owner(ctx, login, "RepositoryOwner")

    def user(info: Any, login: str) -> dict[str, Any]:
        return _owner(ctx, login, "User")

    def organization(info: Any, login: str) -> dict[str, Any]:
        return _owner(ctx, login, "Organization")

    def repository(info: Any, owner: str, name: str, followRenames: bool = True
                   ) -> dict[str, Any] | None:
        return _find_repo(ctx, _owner(ctx, owner, "RepositoryOwner"), name)

    def rate_limit(info: Any, dryRun: bool = False) -> dict[str, Any]:
        full, remaining, reset_at = ctx.points
        return {"cost": ctx.cost[0], "limit": full, "nodeCount": ctx.cost[1],
                "remaining": remaining, "used": full - remaining, "resetAt": rfc3339(reset_at)}

    return {"repositoryOwner": owner, "user": user, "organization": organization,
            "repository": repository, "rateLimit": rate_limit}


def _owner(ctx: Context, login: str, wanted: str) -> dict[str, Any]:
    with ctx.forge.lock:
        known = login in ctx.forge.users
        ctx.forge.per_owner[login] += 1
    kind = "Organization" if login in ctx.organizations else "User"
    if not known or wanted not in ("RepositoryOwner", kind):
        raise NotFound(f"Could not resolve to a{'n' if wanted[0] in 'AEIOU' else ''} "
                        f"{wanted} with the login of '{login}'.")
    base = f"http://{ctx.netloc}"
    out: dict[str, Any] = {
        "__typename": kind, "id": _node_id(kind[0], login), "login": login,
        "url": f"{base}/{login}", "resourcePath": f"/{login}",
        "avatarUrl": lambda info, size=None: f"{base}/{login}.png",
    }
    out["repositories"] = lambda info, **args: _connection(ctx, out, args)
    if kind == "User":  # `User.gists`: one page, no cursors (the listing asks no more)
        out["gists"] = lambda info, **args: {
            "nodes": gists.graphql_nodes(ctx.forge, login, args, ctx.netloc),
            "pageInfo": {"hasNextPage": False, "hasPreviousPage": False},
            "totalCount": len(ctx.forge.gists.get(login, []))}
    out["repository"] = lambda info, name, followRenames=True: _find_repo(ctx, out, name)
    return out


def _node_id(prefix: str, text: str) -> str:
    return prefix + "_" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _entries(ctx: Context, login: str) -> list[dict[str, Any]]:
    with ctx.forge.lock:
        return list(ctx.forge.users.get(login) or [])


def _find_repo(ctx: Context, owner: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in _entries(ctx, owner["login"]):
        if entry.get("name") == name:
            return _repo(ctx, entry, owner)
    raise NotFound(f"Could not resolve to a Repository with the name "
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
        # Ties broken by id, the other way round too (DESC is ASC reversed, as a database
        # ordering by (field, id) answers): a chain from each end meets in the middle.
        key = _ORDER_KEYS[order["field"]]
        out.sort(key=lambda e: (key(e), e["id"] if isinstance(e.get("id"), int) else 0),
                 reverse=order["direction"] == "DESC")
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


def _connection(ctx: Context, owner: dict[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
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
    if ctx.endless is Endless.NEW_CURSORS:  # whatever the end: a full page, cursors go on
        window = range(start, start + (args.get("first") or MAX_PAGE))
    nodes = [_repo(ctx, repos[i % len(repos)], owner) for i in window] if repos else []
    sizes = sum(e.get("size") or 0 for e in repos if isinstance(e.get("size"), int))
    page = {"hasNextPage": window.stop < len(repos), "hasPreviousPage": start > 0,
            "startCursor": _cursor(window.start) if nodes else None,
            "endCursor": _cursor(window.stop - 1) if nodes else None}
    if ctx.endless is not None:
        page["hasNextPage"] = True
        page["endCursor"] = (args.get("after") if ctx.endless is Endless.SAME_CURSOR else None
                             ) or _cursor(max(window.stop - 1, 0))
    return {
        "nodes": nodes,
        "edges": [{"cursor": _cursor(i), "node": n} for i, n in zip(window, nodes, strict=True)],
        "pageInfo": page, "totalCount": len(repos), "totalDiskUsage": min(sizes, 2**31 - 1),
    }


def _repo(ctx: Context, e: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """One REST listing entry as a GraphQL Repository (the REST side serves the same entry)."""
    name, full = e.get("name"), e.get("full_name")
    empty = _is_empty(ctx.forge, owner["login"], name)
    branch = e.get("default_branch")
    return {
        "__typename": "Repository", "id": e.get("node_id"), "databaseId": e.get("id"),
        "name": name, "nameWithOwner": full, "description": e.get("description"),
        "isFork": e.get("fork"), "isPrivate": e.get("private"),
        "isArchived": e.get("archived", False), "isDisabled": e.get("disabled", False),
        "hasWikiEnabled": bool(e.get("has_wiki", False)),
        "latestRelease": ctx.forge.releases.latest(owner["login"], str(name)),
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


def _is_empty(forge: ForgeState, login: str, name: object) -> bool:
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
    return not (packed.is_file() and any(line[:1] not in (b"#", b"^", b"")
                                         for line in packed.read_bytes().splitlines()))
