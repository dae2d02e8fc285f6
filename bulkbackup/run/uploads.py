"""A remote worker's archive uploads, sent in the background (run/remote_store.py): the
upload of one repository's zip and bundle through the server overlaps the git work of the
next repository instead of blocking it.

One thread sends them one at a time, in the order they were given, so the writes of a user
land in the order its sync made them (a zip before the bundle that commits it). At most
MOST_PENDING are pending (sent or waiting): a further upload waits for room. Each reads an
open file (streamed, never in memory), so the writer may delete the file's name once the
upload is handed over; its disk space is freed when the upload ends.

On S3 an archive goes straight to the bucket when serve offers it (a presigned PUT of a
staging key, then serve checks and commits it: web/lease_uploads.py), so its bytes do not
pass through serve; otherwise, and once the bucket could not be written from this host,
through serve.

A failure is the user's failure, as if the upload had been synchronous: the uploads waiting
behind it are dropped unsent (nothing the sync made after it lands), and every later call
(`check`, `submit`, `flush`) raises it until `cancel` takes it. Whoever completes a user
first calls `flush` (every upload landed and confirmed by the server); whoever gives it back
or drops it first calls `cancel` (waiting uploads dropped, the one being sent awaited: the
server writes it whole or not at all, fenced by the lease).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

import urllib3

from bulkbackup.http.bounded import Overdue, SlowRead
from bulkbackup.run.lease_client import LeaseClient, ServerRefused
from bulkbackup.store.base import BeforeCommit

log = logging.getLogger(__name__)

MOST_PENDING = 2


@dataclass(frozen=True)
class Upload:
    """One PUT of a leased user's object, from a file opened before it was handed over."""

    login: str
    key: str
    file: BinaryIO
    metadata: dict[str, str]
    before_commit: BeforeCommit


class Uploads:
    """The background uploads of one worker process (one user's at a time)."""

    def __init__(self, client: LeaseClient, most: int = MOST_PENDING) -> None:
        self.client = client  # this thread's own: never shared with the worker's requests
        self.most = most
        self.direct = True  # straight to the bucket while serve offers it and it works
        self.direct_min = 0  # smaller archives are not offered (serve said so)
        self._cv = threading.Condition()
        self._waiting: deque[Upload] = deque()
        self._sending: Upload | None = None
        self._failure: Exception | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the worker's side ------------------------------------------------------------------

    def submit(self, upload: Upload) -> None:
        """Queue ``upload`` (it owns its file from now on), once there is room; raises the
        failure of an earlier upload instead (the file is closed, nothing sent)."""
        with self._cv:
            while self._failure is None and self._count() >= self.most:
                self._cv.wait()
            if self._failure is not None or self._closed:
                upload.file.close()
                self._raise()
            self._waiting.append(upload)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="uploads",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def pending(self, key: str, below: bool = False) -> bool:
        """Is an upload of ``key`` (``below``: of a key starting with it) still pending?"""
        with self._cv:
            ups = [*self._waiting, *([self._sending] if self._sending else [])]
            return any(u.key == key or (below and u.key.startswith(key)) for u in ups)

    def check(self) -> None:
        """Raise the failure of an upload, if one failed (until `cancel`)."""
        with self._cv:
            if self._failure is not None:
                self._raise()

    def flush(self) -> None:
        """Return once every upload handed over has landed; raise the failure otherwise."""
        with self._cv:
            while self._failure is None and self._count():
                self._cv.wait()
            if self._failure is not None:
                self._raise()

    def cancel(self) -> Exception | None:
        """Drop the waiting uploads, wait for the one being sent; the failure of an upload
        (then forgotten), if one failed."""
        with self._cv:
            self._drop_waiting()
            while self._sending is not None:
                self._cv.wait()
            failure, self._failure = self._failure, None
            return failure

    def close(self) -> None:
        """Cancel what is pending and end the thread."""
        self.cancel()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _count(self) -> int:
        return len(self._waiting) + (self._sending is not None)

    def _raise(self) -> None:
        if self._failure is None:
            raise RuntimeError("uploads closed")
        raise self._failure

    def _drop_waiting(self) -> None:
        for upload in self._waiting:
            upload.file.close()
        self._waiting.clear()
        self._cv.notify_all()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while (upload := self._next()) is not None:
            failure = self._send(upload)
            with self._cv:
                self._sending = None
                if failure is not None and self._failure is None:
                    self._failure = failure
                    self._drop_waiting()  # made after the failed one: never sent
                self._cv.notify_all()

    def _next(self) -> Upload | None:
        with self._cv:
            while not self._waiting and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            self._sending = self._waiting.popleft()
            return self._sending

    def _send(self, upload: Upload) -> Exception | None:
        try:
            upload.before_commit()  # a lease known lost: not sent (the server fences too)
            if not self._direct(upload):
                self.client.put(upload.login, upload.key, upload.file, upload.metadata)
        except Exception as exc:  # noqa: BLE001 - the user's failure, raised in its thread
            return exc
        finally:
            upload.file.close()
        return None

    def _direct(self, upload: Upload) -> bool:
        """Sent straight to the bucket (serve's presigned PUT, then its commit); False: to
        be sent through serve. A bucket this host cannot write (unreachable, or refusing the
        URL) turns direct uploads off for this process: each archive then goes through serve,
        as it would without them."""
        size = os.fstat(upload.file.fileno()).st_size
        if not self.direct or size < self.direct_min:
            return False
        offer = self.client.offer(upload.login, upload.key, size)
        self.direct, self.direct_min = offer.offered, offer.min_size
        if not offer.url:
            return False
        try:
            self.client.put_staged(offer.url, upload.file)
        except (ServerRefused, urllib3.exceptions.HTTPError, OSError, Overdue, SlowRead) as exc:
            # Never the exception's text: urllib3's names the URL, whose signature is a
            # credential until it expires.
            why = str(exc) if isinstance(exc, ServerRefused) else type(exc).__name__
            log.warning("the bucket took no upload from this host (%s): archives go through "
                        "serve from now on", why)
            self.direct = False
            return False
        upload.before_commit()
        self.client.commit(upload.login, upload.key, offer.staging, size, upload.metadata)
        return True
