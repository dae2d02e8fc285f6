"""`bulkbackup worker-token add NAME | list | revoke NAME [--redo]` (DESIGN.md "Remote
workers"): the tokens of remote workers. The token is printed once, on stdout alone (so
`TOKEN=$(bulkbackup worker-token add x)` works); Redis keeps its hash. And the other end:
where `run --server` finds its server and its token (`remote_target`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bulkbackup.config import Settings
from bulkbackup.errors import ConfigError, UsageError
from bulkbackup.timeutil import format_epoch

if TYPE_CHECKING:
    from bulkbackup.run.remote_queue import RemoteTarget

# The token file's size cap (a token is 43 characters).
TOKEN_FILE_MAX_BYTES = 4096


def remote_target(server: str | None, env: Mapping[str, str] = os.environ
                  ) -> RemoteTarget | None:
    """`run --server URL` (else env BULKBACKUP_SERVER) and its worker token (env
    BULKBACKUP_WORKER_TOKEN, or the file env BULKBACKUP_WORKER_TOKEN_FILE names: systemd's
    credentials); None: a local run (Redis and the store)."""
    from bulkbackup.run.remote_queue import RemoteTarget

    url = server or env.get("BULKBACKUP_SERVER", "")
    if not url:
        return None
    token = env.get("BULKBACKUP_WORKER_TOKEN", "")
    path = env.get("BULKBACKUP_WORKER_TOKEN_FILE", "")
    if not token and path:
        try:
            with open(path, "rb") as f:
                token = f.read(TOKEN_FILE_MAX_BYTES).decode("utf-8", "replace").strip()
        except OSError as exc:
            raise ConfigError(f"BULKBACKUP_WORKER_TOKEN_FILE: {exc.strerror}: "
                              f"{Path(path).name}") from None
    if not token:
        raise ConfigError("run --server needs a worker token: set BULKBACKUP_WORKER_TOKEN "
                          "(or BULKBACKUP_WORKER_TOKEN_FILE), made by `bulkbackup "
                          "worker-token add NAME` on the server's side")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--server must start with http:// or https://: {url[:100]!r}")
    return RemoteTarget(url, token)


def _when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    return format_epoch(epoch) or "unknown"


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
