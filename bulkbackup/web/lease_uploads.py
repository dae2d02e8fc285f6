"""Archives a remote worker sends straight to the bucket (docs/serve.md "Lease API"): serve
hands out a presigned PUT of a staging key, the worker sends its file there, and serve checks
it and commits it to its key, fenced by the lease. The archive's bytes never pass through
serve; the worker still holds no store credential (the URL writes one staging key, for
STAGING_EXPIRES_S).

    POST /api/lease/<login>/uploads          {"key", "size"} -> {"url", "staging",
                                             "expires_s", "min_size"}, or {"url": null,
                                             "direct": bool, "min_size"}: send it through
                                             serve (a user object, under min_size bytes:
                                             serve.direct_uploads_min_kb, over CopyObject's
                                             5 GB; "direct": false: a local store or
                                             serve.direct_uploads off, never)
    POST /api/lease/<login>/uploads/commit   {"key", "staging", "size", "metadata"}
                                             -> {"key", "size"}

The commit checks what the worker says against what the bucket holds: the staged object's
size must be the one declared (and within serve.max_upload_mb), its first bytes what its key
says (content_problem, as a carried upload); then one CopyObject with the metadata serve
makes (Worker set to the token's name) writes the key, fenced by the lease (409: lost,
nothing written). The staged object is deleted whatever the outcome. These checks are the
carried upload's, sanity checks and no more: the worker could write to its URL again while
serve checks (until the URL expires), as a lease holder could send a carried archive that only
starts like a bundle; `verify` is what proves an archive restores. One that is never
committed (its worker died) stays in the staging folder: a bucket lifecycle rule expiring
`.staging/` after a day removes it (jobs/README.md).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulkbackup.archive import layout
from bulkbackup.errors import LockLost, StoreError
from bulkbackup.store.s3 import S3Store
from bulkbackup.web.http import Unavailable
from bulkbackup.web.lease_api import ApiError, Leased, guarded, read_json
from bulkbackup.web.lease_objects import MAGIC_BYTES, LeaseObjects, content_problem, own

STAGING_EXPIRES_S = 3600
NONCE_BYTES = 18
NONCE = re.compile(r"[A-Za-z0-9_-]{24}")  # secrets.token_urlsafe(NONCE_BYTES)
COPY_MAX_BYTES = 5 << 30  # one CopyObject
# What may be staged: archives (a user object is small and checked whole: carried).
STAGED_KINDS = frozenset(layout.Kind) - {layout.Kind.USER, layout.Kind.OTHER}


@dataclass(frozen=True)
class _Upload:
    """An upload request's parts, checked: the token's lease on its user, the key, the size
    declared, and the body (the commit's other fields)."""

    leased: Leased
    key: str
    size: int
    body: dict[str, Any]


class LeaseUploads:
    def __init__(self, objects: LeaseObjects) -> None:
        self.objects = objects
        self.api = objects.api
        self.enabled = objects.api.settings.serve.direct_uploads
        self.min_bytes = objects.api.settings.serve.direct_uploads_min_kb << 10

    async def _target(self, request: Request) -> _Upload:
        """What an upload request names, checked (401, 403, 400, 413 as the module says)."""
        got = await self.api.authorize_user(request)  # 401 before the body is read
        doc = await read_json(request)
        key, size = doc.get("key"), doc.get("size")
        if not isinstance(key, str) or not isinstance(size, int) or isinstance(size, bool) \
                or size < 0:
            raise ApiError(400, 'body must be {"key": key, "size": bytes, ...}')
        got = own(got, key)
        if layout.parse_key(key).kind is layout.Kind.OTHER:
            raise ApiError(400, "not a key of the archive layout")
        if size > self.objects.max_upload_bytes:
            raise ApiError(413, f"an upload is at most serve.max_upload_mb "
                                f"({self.objects.max_upload_bytes >> 20} MB)")
        return _Upload(got, key, size, doc)

    async def offer(self, request: Request) -> Response:
        up = await self._target(request)
        got, key, size = up.leased, up.key, up.size
        store = await self.objects.live_store()
        if not (self.enabled and isinstance(store, S3Store)):
            return _json({"url": None, "direct": False})  # never: the worker stops asking
        if not self.min_bytes <= size <= COPY_MAX_BYTES \
                or layout.parse_key(key).kind not in STAGED_KINDS:
            return _json({"url": None, "direct": True, "min_size": self.min_bytes})
        staging = layout.staging_key(got.login, secrets.token_urlsafe(NONCE_BYTES))
        url = await self.api.blocking(store.signed_put, staging, STAGING_EXPIRES_S)
        return _json({"url": url, "staging": staging, "expires_s": STAGING_EXPIRES_S,
                      "min_size": self.min_bytes})

    async def commit(self, request: Request) -> Response:
        up = await self._target(request)
        got, key, size, doc = up.leased, up.key, up.size, up.body
        staging = doc.get("staging")
        prefix = layout.staging_prefix(got.login)
        if not isinstance(staging, str) or not staging.startswith(prefix) \
                or not NONCE.fullmatch(staging[len(prefix):]):
            raise ApiError(403, "not a staging key of this user")
        meta = self.objects.metadata(doc.get("metadata"), got.name)
        store = await self.objects.live_store()
        if not isinstance(store, S3Store):
            raise ApiError(404, "uploads go through serve here")
        try:
            await self._check(store, staging, key, size)
            fence = self.api.leases.fence(got.name, got.member)
            await self.api.blocking(store.copy_as, staging, key, meta, fence.confirm)
        except LockLost:
            raise ApiError(409, f"the lease on {got.login} was lost: nothing written",
                           result="lost") from None
        finally:
            with contextlib.suppress(Unavailable):  # the store down: the lifecycle rule's
                await self.api.blocking(store.delete, staging)
        return _json({"key": key, "size": size})

    async def _check(self, store: S3Store, staging: str, key: str, size: int) -> None:
        head = await self.api.blocking(store.head, staging)
        if head is None:
            raise ApiError(400, "nothing was uploaded to the staging key")
        if head.size != size:
            raise ApiError(400, f"the upload is {head.size} bytes, not the {size} declared")
        first = await self.api.blocking(_first_bytes, store, staging, min(size, MAGIC_BYTES))
        why = content_problem(layout.parse_key(key).kind, first, size)
        if why:
            raise ApiError(422, why)

    def routes(self) -> list[BaseRoute]:
        base = "/api/lease/{login}/uploads"
        return [Route(base, guarded(self.offer), methods=["POST"]),
                Route(base + "/commit", guarded(self.commit), methods=["POST"])]


def _first_bytes(store: S3Store, key: str, n: int) -> bytes:
    if n == 0:
        return b""
    try:
        with store.open(key, 0, n) as stream:
            return stream.read(n)
    except StoreError as exc:
        raise ApiError(400, f"the staged upload could not be read: {exc}") from None


def _json(doc: dict[str, Any]) -> Response:
    return Response(orjson.dumps(doc), media_type="application/json")
