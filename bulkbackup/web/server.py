"""Running the web app under uvicorn."""

from __future__ import annotations

import gc
import logging
import resource
import socket

import uvicorn

from bulkbackup.config import Settings
from bulkbackup.errors import BulkbackupError
from bulkbackup.web.app import create_app
from bulkbackup.web.deadlines import protocol_class
from bulkbackup.web.signin import CALLBACK_PATH

log = logging.getLogger(__name__)
# The open-file soft limit serve raises itself to (at most the hard limit): each client
# connection is an open file, and many systems start processes at 1024.
OPEN_FILES_WANTED = 65536
# The cyclic garbage collector's thresholds for serve (Python's: 700, 10, 10). With 200 clients
# at once, young collections ran every few requests and full ones walked every module's
# objects: 16 % of serve's CPU on /api/users (perf), ~2.5 % with these and the startup's
# objects frozen (never walked again): +15 % requests/s frozen, +23 % with these too, RSS
# as flat over a soak (docs/benchmarks.md). Garbage freed by reference counting, most of it,
# is not affected; cycles wait a little longer.
GC_THRESHOLDS = (10_000, 50, 100)


def tune_gc() -> None:
    """Freeze what exists now (modules, the app: never garbage) out of the collector's walks,
    and collect young objects less often (GC_THRESHOLDS)."""
    gc.collect()  # what is garbage now is not frozen for good
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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


def listen(host: str, port: int) -> socket.socket:
    """The listening socket on ``host``:``port``, bound here rather than by uvicorn: a port
    in use (or an address not ours) is then one line and exit 1, where uvicorn logs and exits
    3, and the port that ``--port 0`` chose is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BulkbackupError(f"serve: cannot listen on {address(host, port)}: "
                              f"{exc.strerror or exc}") from None
    return sock


def address(host: str, port: int) -> str:
    """`host:port` as a URL has it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_address(sock: socket.socket) -> str:
    """The address ``sock`` really listens on (the port the system chose for port 0)."""
    host, port = sock.getsockname()[:2]
    return address(str(host), int(port))


class _NoCallbackQuery(logging.Filter):
    """The access log shows the sign-in callback without its query: its `code` is a
    credential for a few minutes (exchanged for a token once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) \
                and args[2].startswith(CALLBACK_PATH + "?"):
            record.args = (*args[:2], CALLBACK_PATH + "?...", *args[3:])
        return True


def serve(settings: Settings, sock: socket.socket) -> None:
    """Serve ``settings``' archive on the listening ``sock`` until SIGINT/SIGTERM."""
    # Access logs carry paths and query strings only: tokens travel in headers, never logged.
    # X-Forwarded-Proto/For are believed from a proxy on this machine only (uvicorn's
    # FORWARDED_ALLOW_IPS, default 127.0.0.1), so restore commands show the public https URL.
    # Half-sent requests are closed at serve.header_timeout_s / body_timeout_s (deadlines.py).
    raise_open_file_limit()
    http = protocol_class(settings.serve.header_timeout_s, settings.serve.body_timeout_s,
                          settings.serve.upload_timeout_s)
    config = uvicorn.Config(create_app(settings), log_level="info", server_header=False,
                            proxy_headers=True, timeout_graceful_shutdown=5, http=http)
    tune_gc()  # after the app is made: its objects are frozen too
    # After the Config: it sets uvicorn's logging up.
    logging.getLogger("uvicorn.access").addFilter(_NoCallbackQuery())
    uvicorn.Server(config).run(sockets=[sock])
