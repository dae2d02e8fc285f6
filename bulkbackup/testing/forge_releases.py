"""The stand-in's release routes (the data and its answers: testing/releases.py): the REST
list (an API request: counted and rate limited as the listing's, "api_releases"), the
asset downloads on the git host and on the storage host ("asset_download", each one's
(host, path, Authorization) in `ForgeState.asset_seen`)."""

from __future__ import annotations

from email.message import Message

from bulkbackup.testing import releases
from bulkbackup.testing.forge_state import ForgeState

_JSON = {"Content-Type": "application/json; charset=utf-8"}


def handles(segs: list[str]) -> bool:
    return ((len(segs) == 5 and segs[1] == "repos" and segs[4] == "releases")
            or (len(segs) == 7 and segs[3:5] == ["releases", "download"])
            or (len(segs) == 3 and segs[1] == releases.STORAGE_PATH.strip("/")))


def answer(f: ForgeState, segs: list[str], query: dict[str, list[str]], headers: Message,
           netloc: str) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) for `/repos/<login>/<repo>/releases`,
    `/<login>/<repo>/releases/download/<tag>/<name>` or `/release-assets/<id>`."""
    auth = headers.get("Authorization")
    with f.lock:
        if segs[1] != "repos":
            f.counters["asset_download"] += 1
            f.asset_seen.append((netloc, "/".join(segs), auth))
            if segs[1] == releases.STORAGE_PATH.strip("/"):
                return releases.storage_answer(f.releases, "/".join(segs))
            return releases.download_answer(f.releases, segs[1], segs[2], segs[5], segs[6],
                                            netloc)
        f.counters.update(("api", "api_releases"))
        status, body, limits = f.admit(auth or "")
        if not status and segs[2] not in f.users:
            status, body = 404, b'{"message": "Not Found"}'
        if not status:
            status, body, got = releases.list_answer(
                f.releases, segs[2], segs[3], _int(query, "page", 1), _int(query, "per_page", 30),
                headers.get("If-None-Match", ""), netloc)
            limits.update(got)
        f.counters[f"api_{status}" if status < 500 else "api_5xx"] += 1
    return status, body, {**_JSON, **limits}


def _int(query: dict[str, list[str]], key: str, default: int) -> int:
    value = query.get(key, [str(default)])[-1]
    return max(1, min(int(value), 100 if key == "per_page" else 10**6)) if value.isdigit() \
        else default
