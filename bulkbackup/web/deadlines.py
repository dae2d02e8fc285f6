"""Deadlines for receiving a request, for uvicorn's HTTP protocols (httptools or h11).

uvicorn closes idle keep-alive connections, but a connection that has sent half a request
line is held forever: enough of them (slowloris) use up the process's open files and no one
else is served. Here a connection must send a request's headers within header_timeout_s of
being ready for it (opened, or its last response sent) and the request's body within
body_timeout_s of its headers; otherwise it is closed. While the app is working on a request
(or streaming its answer) no deadline runs: a slow reader is flow-controlled instead.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

# Where remote workers' archives are PUT (web/lease_api.py).
UPLOAD_PREFIX = "/api/lease/"


class Phase(enum.Enum):
    HEADERS = "headers"
    BODY = "body"


class _Deadlines:
    """Mixed into uvicorn's protocol class (both keep the request being read in `cycle`:
    None before the first request's headers; `more_body` until its body has arrived;
    `response_complete` once answered)."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    # An archive sent by a remote worker (PUT under UPLOAD_PREFIX) may take this long instead.
    upload_timeout_s = 3600.0

    def connection_made(self, transport: asyncio.BaseTransport, *args: Any) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase | None = None
        super().connection_made(transport, *args)  # type: ignore[misc]
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _waiting_for(self) -> Phase | None:
        cycle: Any = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:
            return Phase.HEADERS
        return Phase.BODY if cycle.more_body else None

    def _follow(self) -> None:
        """(Re)arm the deadline when what the connection waits for changes; data arriving
        in the same phase never extends it (a byte every few seconds is the attack)."""
        phase = self._waiting_for()
        if phase is self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase is not None:
            timeout_s = self.header_timeout_s if phase is Phase.HEADERS else self._body_s()
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(timeout_s, self._expired)

    def _body_s(self) -> float:
        scope = getattr(getattr(self, "cycle", None), "scope", None) or {}
        if scope.get("method") == "PUT" and str(scope.get("path", "")).startswith(
                UPLOAD_PREFIX):
            return self.upload_timeout_s
        return self.body_timeout_s

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport: Any = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.close()


def protocol_class(header_timeout_s: float, body_timeout_s: float,
                   upload_timeout_s: float = 3600.0) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (as `http="auto"` picks it) with the receipt deadlines."""
    base: Any = AutoHTTPProtocol
    return type("DeadlineHTTPProtocol", (_Deadlines, base), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
        "upload_timeout_s": upload_timeout_s})
