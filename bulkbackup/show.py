"""`bulkbackup show LOGIN`: the seed's six read operations for one user."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError, InvalidName, UsageError
from bulkbackup.names import check_login
from bulkbackup.store import Store, layout, open_store
from bulkbackup.store.base import (
    ERROR,
    LAST_SYNC,
    PUSHED_AT,
    REPORTED_REPOS,
    SYNCD_REPOS,
    UPDATED_AT,
)


def describe(store: Store, login: str) -> dict[str, Any]:
    """The user's entry and, per repository, last sync, sizes and last error."""
    head = store.head(layout.user_key(login))
    if head is None:
        raise BulkbackupError(f"user {login} is not in the store")
    repos: dict[str, dict[str, Any]] = {}
    for info in store.list(layout.user_prefix(login)):
        key = layout.parse_key(info.key)
        if key.login != login or key.kind not in (layout.Kind.BUNDLE, layout.Kind.ZIP):
            continue
        entry = repos.setdefault(key.repo, {"name": key.repo, "bundle_bytes": None,
                                            "zip_bytes": None})
        entry[f"{key.kind.value}_bytes"] = info.size
    for name, entry in repos.items():
        bundle = (store.head(layout.bundle_key(login, name))
                  if entry["bundle_bytes"] is not None else None)
        entry.update(
            last_sync=bundle.get(LAST_SYNC) if bundle else None,
            pushed_at=bundle.get(PUSHED_AT) or None if bundle else None,
            updated_at=bundle.get(UPDATED_AT) or None if bundle else None,
            error=bundle.get(ERROR) or None if bundle else None,
        )
    return {
        "login": login,
        "last_sync": head.get(LAST_SYNC) or None,
        "syncd_repos": _int(head.get(SYNCD_REPOS)),
        "reported_repos": _int(head.get(REPORTED_REPOS)),
        "error": head.get(ERROR) or None,
        "repositories": [repos[n] for n in sorted(repos)],
    }


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def render(user: dict[str, Any]) -> str:
    lines = [
        f"user {user['login']}",
        f"  last sync        {user['last_sync'] or '-'}",
        f"  synced repos     {_dash(user['syncd_repos'])}",
        f"  reported repos   {_dash(user['reported_repos'])}",
        f"  error            {user['error'] or '-'}",
    ]
    repos = user["repositories"]
    if not repos:
        lines.append("no repositories stored")
        return "\n".join(lines)
    width = max(10, *(len(r["name"]) for r in repos))
    lines.append(f"{'repository':<{width}}  {'last sync':<20}  {'bundle':>9}  {'zip':>9}  error")
    for r in repos:
        lines.append(f"{r['name']:<{width}}  {r['last_sync'] or '-':<20}  "
                     f"{_size(r['bundle_bytes']):>9}  {_size(r['zip_bytes']):>9}  "
                     f"{r['error'] or '-'}")
    return "\n".join(lines)


def show_command(settings: Settings, login: str, as_json: bool) -> int:
    try:
        check_login(login)
    except InvalidName as exc:
        raise UsageError(str(exc)) from None
    store = open_store(settings.store)
    try:
        user = describe(store, login)
    finally:
        store.close()
    if as_json:
        sys.stdout.write(orjson.dumps(user, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(user))
    return 0
