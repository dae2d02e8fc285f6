"""GitHub logins ignore case: one account is one member of `tracked` (DESIGN.md "Logins").

Keys and `tracked` members keep the login as GitHub spells it; a lookup finds that spelling:
- with Redis (`track`, ingest, `serve`): `tracked` and the index `bulkbackup:logins`
  (keys.py), one round trip;
- from the store alone (`show`, `restore`, `verify`, `sync`): archive/stored.stored_spelling.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import redis

from bulkbackup.names import is_login
from bulkbackup.queue import keys


def index_entry(login: str) -> tuple[str, str] | None:
    """(lowercased, spelling) for the index; None for a lowercase login (its own entry)."""
    folded = login.lower()
    return None if folded == login else (folded, login)


def tracked_spelling(r: redis.Redis, login: str) -> str | None:
    """The spelling ``login``'s account is tracked under, or None when it is not tracked:
    the exact member, else the index, else the lowercase member (one round trip)."""
    folded = login.lower()
    pipe = r.pipeline(transaction=False)
    pipe.zscore(keys.TRACKED, keys.member(login))
    pipe.hget(keys.LOGINS, folded)
    pipe.zscore(keys.TRACKED, keys.member(folded))
    exact, indexed, lowercase = pipe.execute()
    if exact is not None:
        return login
    if isinstance(indexed, bytes):
        indexed = indexed.decode("ascii", "replace")
    if isinstance(indexed, str) and is_login(indexed) and indexed.lower() == folded:
        return indexed
    return folded if lowercase is not None else None


def index_pairs(logins: Iterable[str]) -> Iterator[tuple[str, str]]:
    """The index entries of ``logins`` (those that are not all lowercase)."""
    for login in logins:
        entry = index_entry(login)
        if entry is not None:
            yield entry
