"""The stand-in's gists: each a bare git repository `<git_root>/gist/<id>.git`, served over
smart HTTP at `<forge.url>/gist/<id>.git` (github.gist_base's default for a non-GitHub API:
`<scheme>://<git host>/gist`, as GitHub Enterprise), and listed by `GET /users/<login>/gists`
(REST: an API request, counted "api_gists", rate limited and ETagged as the listing's) and
by GraphQL's `User.gists` (forge_graphql_data.py: `gists_connection`).

A gist's entry has REST's fields (id, node_id, description, public, html_url, git_pull_url,
created_at, updated_at, files) plus `pushed_at` (GraphQL's `pushedAt`; REST answers drop it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from email.message import Message
from typing import Any

from bulkbackup.testing.forge_state import ForgeState
from bulkbackup.testing.repos import BASE_TIME, NAME, PLACEHOLDER, commit, epoch, git, rfc3339

FOLDER = "gist"  # the URL path (and the folder under git_root) of the gists' repositories
_JSON = {"Content-Type": "application/json; charset=utf-8"}


def add(f: ForgeState, login: str, gist_id: str, files: Mapping[str, bytes],
        build: bool = True) -> dict[str, Any]:
    """A public gist of ``login`` (its repository built unless ``build`` is False: listed, but
    its clone fails with 404); any ``gist_id`` is listed (a non-hex one never built)."""
    stamp = rfc3339(BASE_TIME)
    entry: dict[str, Any] = {
        "id": gist_id, "node_id": f"G_{gist_id}", "description": f"gist {gist_id}",
        "public": True, "html_url": f"http://{PLACEHOLDER}/{login}/{gist_id}",
        "git_pull_url": f"http://{PLACEHOLDER}/{FOLDER}/{gist_id}.git",
        "created_at": stamp, "updated_at": stamp, "pushed_at": stamp,
        "files": {name: {"filename": name, "size": len(data)} for name, data in files.items()},
    }
    if build:
        if not NAME.fullmatch(gist_id):
            raise ValueError(f"unsafe gist id {gist_id!r}")
        repo = f.git_root / FOLDER / f"{gist_id}.git"
        shutil.rmtree(repo, ignore_errors=True)
        git("init", "--bare", "--quiet", "--template=", "--initial-branch=main", str(repo))
        git("fast-import", "--quiet", cwd=repo,
            data=commit("refs/heads/main", BASE_TIME, dict(files), None, "gist", 1))
    with f.lock:
        f.gists.setdefault(login, []).insert(0, entry)
    return entry


def push(f: ForgeState, login: str, gist_id: str, files: Mapping[str, bytes]) -> None:
    """A new revision of the gist: a commit on `main`, its times strictly later."""
    repo = f.git_root / FOLDER / f"{gist_id}.git"
    git("fast-import", "--quiet", cwd=repo, data=commit(
        "refs/heads/main", int(time.time()), dict(files), "refs/heads/main^0", "gist edit"))
    with f.lock:
        entry = next(e for e in f.gists[login] if e["id"] == gist_id)
        later = rfc3339(max(time.time(), epoch(entry["updated_at"]) + 1))
        entry["updated_at"] = entry["pushed_at"] = later


def rest_answer(f: ForgeState, login: str, headers: Message, netloc: str
                ) -> tuple[int, bytes, dict[str, str]]:
    """`GET /users/<login>/gists`: the first 100, newest first, with an ETag (304 when it
    still holds; 304s are free, as GitHub's)."""
    auth = headers.get("Authorization", "")
    with f.lock:
        f.counters.update(("api", "api_gists"))
        f.per_owner[login] += 1
        status, body, limits = f.admit(auth)
        if not status and login not in f.users:
            status, body = 404, b'{"message": "Not Found"}'
        entries = [{k: v for k, v in e.items() if k != "pushed_at"}
                   for e in f.gists.get(login, [])[:100]]
        if status:
            f.counters[f"api_{status}" if status < 500 else "api_5xx"] += 1
            return status, body, {**_JSON, **limits}
    body = json.dumps(entries).replace(PLACEHOLDER, netloc).encode()
    etag = f'W/"{hashlib.sha1(body).hexdigest()}{f.etag_suffix}"'  # as the pages' ETags
    seen = {t.strip().removeprefix("W/") for t in headers.get("If-None-Match", "").split(",")}
    status = 304 if etag.removeprefix("W/") in seen else 200
    with f.lock:
        f.counters[f"api_{status}"] += 1
    return status, body if status == 200 else b"", {**_JSON, **limits, "ETag": etag}


_ORDER = {"CREATED_AT": "created_at", "UPDATED_AT": "updated_at", "PUSHED_AT": "pushed_at"}


def graphql_nodes(f: ForgeState, login: str, args: Mapping[str, Any], netloc: str
                  ) -> list[dict[str, Any]]:
    """The Gist objects `User.gists(...)` selects (privacy, orderBy, first/last; no cursor:
    the listing asks one page)."""
    with f.lock:
        entries = [dict(e) for e in f.gists.get(login, [])]
    if args.get("privacy") == "SECRET":
        entries = []
    order = args.get("orderBy")
    if order:
        entries.sort(key=lambda e: str(e.get(_ORDER[order["field"]]) or ""),
                     reverse=order["direction"] == "DESC")
    if args.get("first") is not None:
        entries = entries[: args["first"]]
    if args.get("last") is not None:
        entries = entries[-args["last"]:] if args["last"] else []
    return [{
        "__typename": "Gist", "id": e["node_id"], "name": e["id"],
        "description": e.get("description"), "isPublic": e.get("public", True),
        "isFork": False, "createdAt": e["created_at"], "updatedAt": e["updated_at"],
        "pushedAt": e.get("pushed_at"), "resourcePath": f"/{login}/{e['id']}",
        "url": str(e["html_url"]).replace(PLACEHOLDER, netloc),
    } for e in entries]
