"""Top-level keys (the users) found ignoring case, for a store whose keys are case-sensitive
and listed in byte order (S3): GitHub logins ignore case (DESIGN.md "Logins").

A listing takes a prefix, not a case-insensitive one, so the search walks the case variants of
``prefix`` one character at a time, keeping only the variants that some key starts with: a
variant whose listing fits in ``SCAN_USERS`` entries is read whole and filtered here; a larger
one is extended by its next character. Each listing is read for its first page only. At 100 M
users a variant falls under ``SCAN_USERS`` after 3 or 4 characters, so a lookup costs about two
listings per character up to there (~8-16 requests), whatever the size of the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from bulkbackup.names import is_login
from bulkbackup.store.listing import ObjectInfo

# Entries read of one listing (S3 counts a user's object and its folder: one page of 1000).
SCAN_USERS = 250
# Live case variants kept per character: past it the answer may be incomplete ("more").
MAX_VARIANTS = 64


class TopLister(Protocol):
    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]: ...


def first_top(store: TopLister, prefix: str, n: int) -> tuple[list[str], bool]:
    """Up to ``n`` top-level logins starting with ``prefix``, and whether that is all."""
    names: list[str] = []
    listing = store.list_top(prefix)
    try:
        for info in listing:
            if len(names) == n:
                return names, False
            if is_login(info.key):
                names.append(info.key)
    finally:
        with contextlib.suppress(AttributeError):
            listing.close()  # type: ignore[attr-defined]
    return names, True


def top_ignoring_case(store: TopLister, prefix: str, limit: int, whole: bool = False
                      ) -> tuple[list[str], bool]:
    """Logins starting with ``prefix`` ignoring case (``whole``: equal to it), in byte order,
    at most ``limit`` (<= SCAN_USERS); and whether there may be more."""
    want = prefix.lower()
    found: set[str] = set()
    more = False
    variants = [""]
    for i, char in enumerate(prefix):
        last = i == len(prefix) - 1
        grown: list[str] = []
        for base in variants:
            for c in dict.fromkeys((char.lower(), char.upper())):
                names, complete = first_top(store, base + c, SCAN_USERS)
                if complete or last:
                    # A name sorts before its extensions: the whole login is in the first page.
                    found.update(n for n in names
                                 if (n.lower() == want if whole else n.lower().startswith(want)))
                    more = more or not (complete or whole)
                elif names:
                    grown.append(base + c)
        more = more or len(grown) > MAX_VARIANTS
        variants = grown[:MAX_VARIANTS]
        if not variants:
            break
    ordered = sorted(found)
    return ordered[:limit], more or len(ordered) > limit
