"""A GH Archive stand-in for tests, benchmarks and the demo: hour files written in GH
Archive's format (gzip, one JSON event per line, `id` then `type` first, as GH Archive writes
them) and served over HTTP as `<url>/<YYYY-MM-DD-H>.json.gz`, 404 for an hour not published
yet; hostile hours too (truncated gzip, bad lines, a huge line, not gzip at all).

`record` is the hook of the GitHub stand-in (forge_changes.py, `event_log`): a change it applies
is recorded as the event GitHub would publish, in the hour it is made; `publish_recorded`
writes those hours.

    python -m bulkbackup.testing.gharchive --root DIR [--port PORT]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import shutil
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

_CHUNK = 1 << 16
_ids = itertools.count(10_000_000_000)


def hour_name(hour: datetime) -> str:
    """GH Archive's name of an hour: 2015-01-01-15 (no leading zero on the hour)."""
    utc = hour.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}-{utc.hour}"


def hour_of(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def event(kind: str, repo: str, actor: str | None = None, payload: dict[str, Any] | None = None,
          at: datetime | None = None) -> dict[str, Any]:
    """One event shaped as GH Archive's (since 2015): ``repo`` is `owner/name`; the actor is
    the owner unless given."""
    owner = repo.split("/", 1)[0]
    login = actor or owner
    when = (at or datetime.now(UTC)).astimezone(UTC)
    return {
        "id": str(next(_ids)),
        "type": kind,
        "actor": {"id": zlib.crc32(login.encode()), "login": login, "display_login": login,
                  "gravatar_id": "", "url": f"https://api.github.com/users/{login}",
                  "avatar_url": "https://avatars.githubusercontent.com/u/1?"},
        "repo": {"id": zlib.crc32(repo.encode()), "name": repo,
                 "url": f"https://api.github.com/repos/{repo}"},
        "payload": payload or {},
        "public": True,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def push(repo: str, ref: str = "refs/heads/main", at: datetime | None = None) -> dict[str, Any]:
    return event("PushEvent", repo, payload={"push_id": next(_ids), "size": 1,
                                              "distinct_size": 1, "ref": ref,
                                              "head": "0" * 40, "before": "1" * 40,
                                              "commits": []}, at=at)


def create(repo: str, ref_type: str, ref: str | None = None,
           at: datetime | None = None) -> dict[str, Any]:
    """A CreateEvent: ``ref_type`` branch, tag or repository (ref None)."""
    return event("CreateEvent", repo, payload={"ref": ref, "ref_type": ref_type,
                                                "master_branch": "main", "description": None,
                                                "pusher_type": "user"}, at=at)


def fork(source: str, forkee: str, at: datetime | None = None) -> dict[str, Any]:
    """``forkee`` (`owner/name`) forked from ``source`` by forkee's owner."""
    return event("ForkEvent", source, actor=forkee.split("/", 1)[0],
                 payload={"forkee": {"id": next(_ids), "full_name": forkee}}, at=at)


def lines_of(events: Iterable[dict[str, Any] | bytes]) -> Iterator[bytes]:
    """Each event as one line (bytes are written as they are: a bad line)."""
    for e in events:
        yield e if isinstance(e, bytes) else orjson.dumps(e) + b"\n"


# Lines a real hour never holds but an hour must survive: counted, never fatal.
BAD_LINES = (
    b"not json at all\n",
    b'{"id":"1","type":"PushEvent","actor":{"login":"x"}}\n',  # no repo
    b'{"id":"2","type":"PushEvent","repo":{"name":"no-slash"}}\n',
    b'{"id":"3","type":"PushEvent","repo":{"name":"../etc/passwd"}}\n',
    b'{"id":"4","type":"PushEvent","repo":{"name":"bad login!/x"}}\n',
    b'{"id":"5","type":"ForkEvent","repo":{"name":"a/b"},"payload":{"forkee":7}}\n',
    b'{"id":"6","type":"PushEvent","repo":{"name":42}}\n',
    b'["an", "array"]\n',
)


def huge_line(n_bytes: int, kind: str = "PushEvent") -> Iterator[bytes]:
    """One line of ``n_bytes`` (an event of ``kind`` padded), in pieces: never held whole."""
    head = b'{"id":"9","type":"%s","repo":{"name":"huge/line"},"payload":{"pad":"' % (
        kind.encode())
    yield head
    left = max(n_bytes - len(head) - 4, 0)
    piece = b"x" * _CHUNK
    while left > 0:
        yield piece[:left]
        left -= min(left, _CHUNK)
    yield b'"}}\n'


def write_hour(path: Path, lines: Iterable[bytes], truncate_bytes: int = 0,
               compresslevel: int = 1) -> None:
    """Write ``lines`` gzipped to ``path`` as they come; ``truncate_bytes`` > 0 cuts that many
    bytes off the end (a truncated download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            for line in lines:
                gz.write(line)
        if truncate_bytes:
            raw.truncate(max(raw.tell() - truncate_bytes, 0))
    tmp.replace(path)


class _Handler(BaseHTTPRequestHandler):
    archive: GHArchive
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = self.archive.file_for(self.path)
        with self.archive.lock:
            self.archive.requests[self.path] += 1
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if body:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, _CHUNK)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (an hour it stopped reading) is no error."""


class GHArchive:
    """Hour files under ``root``, served on ``url`` once `start()`ed (or `with`)."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.url = ""
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # path -> GETs and HEADs
        self._recorded: dict[datetime, list[dict[str, Any]]] = {}
        # When `record` says a change was made. A test sets it an hour or more back: a run
        # claims marks of hours that ended before it started, as GH Archive publishes an
        # hour only after it ends.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> GHArchive:
        handler = type("Handler", (_Handler,), {"archive": self})
        self._server = _Server((self.host, self.port), handler)
        self.url = f"http://{self.host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="gharchive", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> GHArchive:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def path(self, hour: datetime) -> Path:
        return self.root / f"{hour_name(hour)}.json.gz"

    def file_for(self, url_path: str) -> Path | None:
        name = url_path.split("?", 1)[0].lstrip("/")
        if "/" in name or not name.endswith(".json.gz"):
            return None
        path = self.root / name
        return path if path.is_file() else None

    # -- publishing ------------------------------------------------------------------------

    def publish(self, hour: datetime, events: Iterable[dict[str, Any] | bytes],
                truncate_bytes: int = 0) -> Path:
        """The hour is published with ``events`` (bytes: lines as they are, e.g. BAD_LINES)."""
        path = self.path(hour)
        write_hour(path, lines_of(events), truncate_bytes)
        return path

    def publish_lines(self, hour: datetime, lines: Iterable[bytes]) -> Path:
        path = self.path(hour)
        write_hour(path, lines)
        return path

    def publish_raw(self, hour: datetime, data: bytes) -> Path:
        """The hour's file is ``data`` (an HTML error page, garbage)."""
        path = self.path(hour)
        path.write_bytes(data)
        return path

    def unpublish(self, hour: datetime) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(hour).unlink()

    # -- the GitHub stand-in's hook (forge_changes.ForgeChanges.event_log) -----------------

    def record(self, kind: str, repo: str, payload: dict[str, Any],
               actor: str | None = None) -> None:
        """A change was made now: kept as its event, for the hour it is in."""
        e = event(kind, repo, actor=actor, payload=payload, at=self.clock())
        when = datetime.strptime(e["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        with self.lock:
            self._recorded.setdefault(hour_of(when), []).append(e)

    def recorded(self) -> dict[datetime, list[dict[str, Any]]]:
        with self.lock:
            return {h: list(es) for h, es in self._recorded.items()}

    def publish_recorded(self) -> list[datetime]:
        """Every hour with recorded events published (again, with all of them); its hours."""
        hours = self.recorded()
        for hour, events in hours.items():
            self.publish(hour, events)
        return sorted(hours)


def main() -> None:  # pragma: no cover - for the demo and by hand
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    with GHArchive(args.root, args.host, args.port) as archive:
        print(archive.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
