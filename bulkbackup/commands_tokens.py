"""`bulkbackup worker-token add NAME | list | revoke NAME [--redo]` (DESIGN.md "Remote
workers"): the tokens of remote workers. The token is printed once, on stdout alone (so
`TOKEN=$(bulkbackup worker-token add x)` works); Redis keeps its hash."""

from __future__ import annotations

import sys
import time

from bulkbackup.config import Settings
from bulkbackup.errors import UsageError


def _when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def worker_token_command(settings: Settings, action: str, name: str | None,
                         redo: bool) -> int:
    from bulkbackup.queue import worker_tokens
    from bulkbackup.queue.connection import Scripts, connect
    from bulkbackup.queue.remote_leases import RemoteLeases

    r = connect(settings.redis)
    if action == "add":
        token = worker_tokens.add(r, name or "")
        print(token)
        print(f"worker-token: {name}: shown once; give it to the worker as "
              "BULKBACKUP_WORKER_TOKEN", file=sys.stderr)
        return 0
    if action == "list":
        rows = worker_tokens.list_tokens(r)
        if not rows:
            print("no worker tokens", file=sys.stderr)
        for row in rows:
            print(f"{row.name}\tcreated {_when(row.created)}\tlast used {_when(row.last_used)}")
        return 0
    assert action == "revoke"
    worker_tokens.check_name(name or "")
    assert name is not None
    if not worker_tokens.remove(r, name):
        raise UsageError(f"no worker token named {name!r}")
    leases = RemoteLeases(r, Scripts(r), settings.run.lock_ttl_s, settings.run.max_attempts)
    given = leases.give_back_all(name)
    print(f"worker-token: {name} revoked; {len(given)} leased users given back",
          file=sys.stderr)
    if redo:
        n = leases.redo(name)
        print(f"worker-token: {n} users it archived are due again", file=sys.stderr)
    return 0
