"""Priority users (the seed's plus-users): accounts signed in with GitHub on serve's page.

serve only writes them (`make_priority`); the claims read keys.PRIORITY (a member is claimed
before everyone else once its score, when it is next due, has passed).
"""

from __future__ import annotations

import redis

from bulkbackup.queue import keys
from bulkbackup.queue.connection import server_time


def make_priority(r: redis.Redis, login: str) -> bool:
    """Make the tracked account ``login`` (as spelled in `tracked`) a priority user, due now
    (Redis's clock). An account already a priority user keeps its schedule (ZADD NX): signing
    in again cannot make it due again and again. True when it was not a priority user."""
    now_s = server_time(r)
    return bool(r.zadd(keys.PRIORITY, {keys.member(login): now_s}, nx=True))


def is_priority(r: redis.Redis, login: str) -> bool:
    return r.zscore(keys.PRIORITY, keys.member(login)) is not None
