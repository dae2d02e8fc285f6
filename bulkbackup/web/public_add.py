"""Public add (the seed's /adduser): anyone adds logins that exist on GitHub.

Each login not tracked yet costs one `GET /users/<login>` (with github.tokens; its canonical
spelling is what is tracked) and counts against the client address's hour: at most
serve.public_add_per_hour per address (an IPv6 address by its /64: one host has a whole
/64) in a counter per address and hour (keys.public_add, one INCRBY and one EXPIRE). Logins
already tracked cost nothing and do not count. Calls block; the app runs them in the
threadpool.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from dataclasses import dataclass

import redis

from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError
from bulkbackup.forge.github_rest import GitHub
from bulkbackup.queue import keys, tracked
from bulkbackup.queue.logins import tracked_spelling


@dataclass(frozen=True)
class Added:
    added: list[str]
    existing: list[str]
    not_found: list[str]


class OverLimit(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class GitHubUnavailable(Exception):
    """GitHub could not say whether a login exists (rate limited, unreachable, refused)."""


def address_of(host: str) -> str:
    """The address a client is counted under: its IPv4 address, its IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class PublicAdd:
    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.per_hour = settings.serve.public_add_per_hour
        self.stop = threading.Event()
        # One attempt, within github.timeout_s: a page's request does not wait out retries.
        gh = dataclasses.replace(settings.github, max_retries=min(settings.github.max_retries, 1),
                                 user_deadline_s=settings.github.timeout_s)
        self.github = GitHub(gh, self.stop, pool_size=4)

    def close(self) -> None:
        self.stop.set()
        self.github.close()

    def add(self, host: str, logins: list[str]) -> Added:
        """Track ``logins`` (validated) that exist on GitHub; OverLimit when the lookups
        they need would pass the address's hour; GitHubUnavailable."""
        unique = list(dict.fromkeys(logins))
        spelled = {x: tracked_spelling(self.r, x) for x in unique}
        lookups = [x for x in unique if spelled[x] is None]
        if lookups:
            self._count(address_of(host), len(lookups))
        not_found: list[str] = []
        for login in lookups:
            try:
                name = self.github.login_of(login)
            except BulkbackupError as exc:
                raise GitHubUnavailable(str(exc)) from None
            if name is None:
                not_found.append(login)
            spelled[login] = name
        names = [n for n in (spelled[x] for x in unique) if n is not None]
        added, existing = tracked.add_never_synced(self.r, names) if names else ([], [])
        return Added(added, list(dict.fromkeys(s for _, s in existing)), not_found)

    def _count(self, address: str, n: int) -> None:
        now = time.time()
        key = keys.public_add(address, int(now // 3600))
        pipe = self.r.pipeline(transaction=False)
        pipe.incrby(key, n)
        pipe.expire(key, keys.PUBLIC_ADD_TTL_S)
        count, _ = pipe.execute()
        if int(count) > self.per_hour:
            self.r.decrby(key, n)  # refused: it costs nothing
            raise OverLimit(max(1, int(3600 - now % 3600)))
