"""Running the web app under uvicorn."""

from __future__ import annotations

import logging
import resource

import uvicorn

from bulkbackup.config import Settings
from bulkbackup.web.app import create_app
from bulkbackup.web.deadlines import protocol_class

log = logging.getLogger(__name__)
# The open-file soft limit serve raises itself to (at most the hard limit): each client
# connection is an open file, and many systems start processes at 1024.
OPEN_FILES_WANTED = 65536


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit toward OPEN_FILES_WANTED; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard,
                                                                          OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve ``settings``' archive on ``host``:``port`` until SIGINT/SIGTERM."""
    raise_open_file_limit()
    # Access logs carry paths and query strings only: tokens travel in headers, never logged.
    # X-Forwarded-Proto/For are believed from a proxy on this machine only (uvicorn's
    # FORWARDED_ALLOW_IPS, default 127.0.0.1), so restore commands show the public https URL.
    # Half-sent requests are closed at serve.header_timeout_s / body_timeout_s (deadlines.py).
    http = protocol_class(settings.serve.header_timeout_s, settings.serve.body_timeout_s)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                server_header=False, proxy_headers=True, timeout_graceful_shutdown=5,
                http=http)
