"""The GraphQL listing query and the stored shape: REST field names from GraphQL fields.

`MAPPING` is the one table of the stored repository fields; the query's node selection is
built from it, so the two cannot drift.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

PAGE = 100  # repositories per owner and query (GitHub's most)


class End(Enum):
    """Which end of an owner's repositories a chain of pages reads from (by creation time;
    forge/graphql_paging.py)."""

    FRONT = "ASC"  # the listing's order: every owner's first page
    BACK = "DESC"  # a big owner's second chain


class Ask(NamedTuple):
    """One page asked in a query: the owner's first (no cursor, from the front) or a next."""

    login: str
    cursor: str | None
    end: End = End.FRONT

    @property
    def first(self) -> bool:
        """The owner's first page: the one that may carry its gists."""
        return self.cursor is None and self.end is End.FRONT


def _same(value: Any) -> Any:
    return value


def _git_url(url: Any) -> Any:
    return url + ".git" if isinstance(url, str) else None


def _ref_name(ref: Any) -> Any:
    return ref.get("name") if isinstance(ref, dict) and isinstance(ref.get("name"), str) else None


def _tag_name(release: Any) -> Any:
    name = release.get("tagName") if isinstance(release, dict) else None
    return name if isinstance(name, str) else None


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else None


@dataclass(frozen=True)
class FieldMap:
    """REST field `rest` <- GraphQL field `graphql` (selected as `selection`), converted."""

    rest: str
    graphql: str
    selection: str = ""
    convert: Callable[[Any], Any] = _same


# The stored shape: REST names on the left. Values come as GitHub sends them (the pipeline
# validates what it uses: names, timestamps, clone URLs).
MAPPING: tuple[FieldMap, ...] = (
    FieldMap("id", "databaseId"),
    FieldMap("node_id", "id"),
    FieldMap("name", "name"),
    FieldMap("full_name", "nameWithOwner"),
    FieldMap("private", "isPrivate"),
    FieldMap("html_url", "url"),
    FieldMap("description", "description"),
    FieldMap("fork", "isFork"),
    FieldMap("clone_url", "url", convert=_git_url),  # GitHub's https clone URL is url + .git
    # Empty repositories have no default branch ref on GraphQL (REST names the configured
    # branch): null here.
    FieldMap("default_branch", "defaultBranchRef", "defaultBranchRef { name }", _ref_name),
    FieldMap("size", "diskUsage"),  # KB, as REST `size`
    FieldMap("pushed_at", "pushedAt"),
    FieldMap("updated_at", "updatedAt"),
    FieldMap("created_at", "createdAt"),
    FieldMap("archived", "isArchived"),
    FieldMap("visibility", "visibility", convert=_lower),  # PUBLIC -> public
    # Whether the wiki is on (its git repository may still not exist: backup/wikis.py).
    FieldMap("has_wiki", "hasWikiEnabled"),
    # Not a REST field: the latest release's tag (null: none), which says whether the
    # release list may have changed (backup/releases.py). An object, not a connection: a
    # connection (`releases { totalCount }`) would be one more request per repository in
    # GitHub's point rule, 100 points a query of 100 owners.
    FieldMap("latest_release", "latestRelease", "latestRelease { tagName }", _tag_name),
)
NODE_FIELDS = " ".join(dict.fromkeys(m.selection or m.graphql for m in MAPPING))


# A gist's stored fields (forge/listing.GIST_FIELDS) <- GraphQL's Gist: `name` is the id.
GIST_MAPPING: tuple[FieldMap, ...] = (
    FieldMap("id", "name"),
    FieldMap("node_id", "id"),
    FieldMap("description", "description"),
    FieldMap("public", "isPublic"),
    FieldMap("html_url", "url"),
    FieldMap("created_at", "createdAt"),
    FieldMap("updated_at", "updatedAt"),
    FieldMap("pushed_at", "pushedAt"),
)
# An owner's public gists, on its first page only, most recently updated first (one page:
# listing.MAX_GISTS). A connection, so one more request per owner in GitHub's rule: asked
# only within the rounding's slack (`gist_owners`), so that it never costs a point.
GISTS_SELECTION = (
    "... on User { gists(first: 100, privacy: PUBLIC, orderBy: {field: UPDATED_AT, "
    "direction: DESC}) { nodes { " + " ".join(m.graphql for m in GIST_MAPPING) + " } } }")


def gist_to_rest(node: dict[str, Any]) -> dict[str, Any]:
    return {m.rest: m.convert(node.get(m.graphql)) for m in GIST_MAPPING}


def to_rest(node: dict[str, Any]) -> dict[str, Any]:
    """One GraphQL repository node as the REST listing entry the store keeps."""
    return {m.rest: m.convert(node.get(m.graphql)) for m in MAPPING}


def points_for(connections: int) -> int:
    """GitHub's cost of a query with `connections` connections at the owners' level (a
    repository connection per owner, and a gist connection per first page with gists)."""
    return max(1, math.floor(connections / 100 + 0.5))


# Owners take turns for the gists when a query has no room for all of theirs: each is in
# the first turn one day in GIST_TURNS (so, with a pass a day, asked at least that often).
GIST_TURNS = 3


def connections(items: Sequence[Ask | tuple[str, str | None]], gists: Collection[str] = ()
                ) -> int:
    """The connections `build_query(items, gists)` asks (for points_for)."""
    return len(items) + sum(1 for a in map(_ask, items) if a.first and a.login in gists)


def _ask(item: Ask | tuple[str, str | None]) -> Ask:
    return item if isinstance(item, Ask) else Ask(*item)


def gist_owners(items: Sequence[Ask | tuple[str, str | None]], day: int) -> set[str]:
    """The owners whose gists a query of ``items`` asks: as many first pages (no cursor) as
    fit in the rounding's slack, so the query costs the points it costs without them (GitHub
    rounds half up: 100 connections or 149 are both 1 point; 100 owners leave room for 49,
    25 owners for all). When not all fit, the owners of this ``day``'s first turn come first,
    then the second's (crc32 of the login: the same turn on every host)."""
    first = [a.login for a in map(_ask, items) if a.first]
    room = 100 * points_for(len(items)) + 49 - len(items)
    if len(first) <= room:
        return set(first)
    first.sort(key=lambda login: (zlib.crc32(login.lower().encode()) + day) % GIST_TURNS)
    return set(first[:room])


def build_query(items: Sequence[Ask | tuple[str, str | None]], gists: Collection[str] = ()
                ) -> tuple[str, dict[str, str]]:
    """One query for the pages asked (an Ask, or (login, cursor or None): from the front),
    aliases u0..; values go as variables. The first page of an owner in ``gists`` also asks
    its public gists."""
    decls, parts, variables = [], [], {}
    for i, ask in enumerate(map(_ask, items)):
        login, cursor = ask.login, ask.cursor
        decls.append(f"$l{i}: String!")
        variables[f"l{i}"] = login
        after = ""
        if cursor is not None:
            decls.append(f"$c{i}: String")
            variables[f"c{i}"] = cursor
            after = f", after: $c{i}"
        parts.append(
            f"u{i}: repositoryOwner(login: $l{i}) {{ login repositories(first: {PAGE}, "
            f"ownerAffiliations: OWNER, orderBy: {{field: CREATED_AT, "
            f"direction: {ask.end.value}}}{after}) {{ totalCount nodes {{ {NODE_FIELDS} }} "
            f"pageInfo {{ hasNextPage endCursor }} }}"
            f"{' ' + GISTS_SELECTION if ask.first and login in gists else ''} }}")
    query = (f"query({', '.join(decls)}) {{ rateLimit {{ cost remaining resetAt }} "
             f"{' '.join(parts)} }}")
    return query, variables
