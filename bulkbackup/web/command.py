"""`bulkbackup serve` and `bulkbackup track LOGIN...` (the add form's command-line twin)."""

from __future__ import annotations

import logging
import sys

from bulkbackup import tracked
from bulkbackup.config import Settings
from bulkbackup.errors import ConfigError, InvalidName, UsageError
from bulkbackup.names import check_login

log = logging.getLogger(__name__)


def serve_command(settings: Settings, host: str | None, port: int | None) -> int:
    """Serve until SIGINT/SIGTERM. Binds serve.host (127.0.0.1 unless told otherwise)."""
    try:
        import uvicorn

        from bulkbackup.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"serve needs the optional dependencies: pip install "
                          f"'bulkbackup[serve]' ({exc.name} is missing)") from None
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, not {port}")
    app = create_app(settings)
    print(f"bulkbackup serve: http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    # Access logs carry paths and query strings only: tokens travel in headers, never logged.
    # X-Forwarded-Proto/For are believed from a proxy on this machine only (uvicorn's
    # FORWARDED_ALLOW_IPS, default 127.0.0.1), so restore commands show the public https URL.
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False,
                proxy_headers=True, timeout_graceful_shutdown=5)
    return 0


def track(settings: Settings, logins: list[str]) -> tuple[list[str], list[str]]:
    """Add ``logins`` to `tracked` (ZADD NX -inf, as ingest): (added, already tracked)."""
    for login in logins:
        try:
            check_login(login)
        except InvalidName as exc:
            raise UsageError(str(exc)) from None
    from bulkbackup.web.users import add_tracked

    return add_tracked(tracked.connect(settings.redis), logins)


def track_command(settings: Settings, logins: list[str]) -> int:
    added, existing = track(settings, logins)
    for login in added:
        print(f"{login}: added")
    for login in existing:
        print(f"{login}: already tracked")
    print(f"track: {len(added)} added, {len(existing)} already tracked", file=sys.stderr)
    return 0
