"""Running the web app under uvicorn."""

from __future__ import annotations

import uvicorn

from bulkbackup.config import Settings
from bulkbackup.web.app import create_app


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve ``settings``' archive on ``host``:``port`` until SIGINT/SIGTERM."""
    # Access logs carry paths and query strings only: tokens travel in headers, never logged.
    # X-Forwarded-Proto/For are believed from a proxy on this machine only (uvicorn's
    # FORWARDED_ALLOW_IPS, default 127.0.0.1), so restore commands show the public https URL.
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                server_header=False, proxy_headers=True, timeout_graceful_shutdown=5)
