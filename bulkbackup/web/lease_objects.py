"""The objects of a leased user, for a remote worker (docs/serve.md "Lease API"): reads of
its stored state, and writes to the store fenced by the lease (store/fenced.py with
queue/remote_leases.LeaseFence: a lease that lapsed or was revoked lands nothing).

    GET    /api/lease/<login>/heads/<key>      -> {"key", "size", "last_modified", "metadata"}
    GET    /api/lease/<login>/objects/<key>    ?start=&end= -> the bytes
    GET    /api/lease/<login>/list             ?prefix=&shallow=1 -> {"objects": [...]}
    GET    /api/lease/<login>/state            -> {"user": head or null, "objects": [...] or
                                                  null}: the user object's head and the
                                                  shallow listing of its archives
    PUT    /api/lease/<login>/objects/<key>    the archive (X-Bulkbackup-Metadata: JSON)
    POST   /api/lease/<login>/metadata/<key>   {"metadata": {...}}
    POST   /api/lease/<login>/copy             {"from": key, "to": key}
    DELETE /api/lease/<login>/objects/<key>
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bulkbackup.archive import layout
from bulkbackup.archive.metadata import WORKER, canonical
from bulkbackup.archive.stored import MAX_USER_OBJECT_BYTES
from bulkbackup.errors import LockLost, NotFound, StoreError
from bulkbackup.store.base import Head, check_key, clean_metadata
from bulkbackup.store.fenced import FencedStore
from bulkbackup.store.listing import ObjectInfo
from bulkbackup.web.lease_api import ApiError, LeaseApi, Leased, guarded, held, read_json

METADATA_HEADER = "x-bulkbackup-metadata"
LIST_MAX = 100_000
# A state read lists the user's archives up to this many (a larger user lists them itself).
STATE_LIST_MAX = 2_000
READ_CHUNK = 1 << 16
# What an upload must start with, by the kind of its key (a bundle may be empty: "no archive").
BUNDLE_MAGIC = (b"# v2 git bundle\n", b"# v3 git bundle\n")
ZIP_MAGIC = b"PK\x03\x04"
MAGIC_BYTES = 16


def head_json(key: str, head: Head) -> dict[str, Any]:
    return {"key": key, "size": head.size, "last_modified": head.last_modified.isoformat(),
            "metadata": head.metadata}


def info_json(info: ObjectInfo) -> dict[str, Any]:
    return {"key": info.key, "size": info.size, "last_modified": info.last_modified.isoformat()}


def content_problem(kind: layout.Kind, first: bytes, size: int) -> str:
    """Why an upload is not what its key says ("" when it is), from its first bytes."""
    if kind in (layout.Kind.BUNDLE, layout.Kind.PART):
        ok = size == 0 or any(first.startswith(m) for m in BUNDLE_MAGIC)
        return "" if ok else "a .bundle must be a git bundle (v2 or v3)"
    if kind is layout.Kind.ZIP:
        return "" if first.startswith(ZIP_MAGIC) else "a .zip must be a zip archive"
    return ""  # the user object: checked whole (a JSON array) once received


class LeaseObjects:
    def __init__(self, api: LeaseApi, store: Any) -> None:
        self.api = api
        self.live_store = store  # async () -> Store (Site.live_store)
        self.max_upload_bytes = api.settings.serve.max_upload_mb << 20
        self.spool = Path(tempfile.mkdtemp(prefix="bulkbackup-uploads-"))

    async def _key(self, request: Request, key: str) -> Leased:
        """The token and its leased user, ``key`` being that user's own (401 first, then
        403: not a key of the user, or not leased by the token)."""
        return own(await self.api.authorize_user(request), key)

    async def _fenced(self, name: str, member: str) -> FencedStore:
        return FencedStore(await self.live_store(), self.api.leases.fence(name, member))

    # -- reads -------------------------------------------------------------------------------

    async def head(self, request: Request) -> Response:
        key = request.path_params["key"]
        await self._key(request, key)
        store = await self.live_store()
        head = await self.api.blocking(store.head, key)
        if head is None:
            raise ApiError(404, "not found")
        return Response(orjson.dumps(head_json(key, head)), media_type="application/json")

    async def read(self, request: Request) -> Response:
        key = request.path_params["key"]
        await self._key(request, key)
        start, end = _int(request, "start", 0), _int(request, "end", None)
        store = await self.live_store()
        head = await self.api.blocking(store.head, key)
        if head is None:
            raise ApiError(404, "not found")
        try:
            stream = await self.api.blocking(store.open, key, start, end)
        except NotFound:  # deleted since the head
            raise ApiError(404, "not found") from None

        def chunks() -> Any:
            with contextlib.closing(stream):
                while chunk := stream.read(READ_CHUNK):
                    yield chunk

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def state(self, request: Request) -> Response:
        """What a sync reads first, in one request: the user object's head and the shallow
        listing of the user's keys (its archives; null past STATE_LIST_MAX: the worker
        lists them itself)."""
        login = (await self.api.leased(request)).login
        store = await self.live_store()

        def read() -> tuple[Head | None, list[dict[str, Any]] | None]:
            head = store.head(layout.user_key(login))
            out: list[dict[str, Any]] = []
            for info in store.list(layout.user_prefix(login), shallow=True):
                if len(out) >= STATE_LIST_MAX:
                    return head, None
                out.append(info_json(info))
            return head, out

        head, objects = await self.api.blocking(read)
        user = None if head is None else head_json(layout.user_key(login), head)
        return Response(orjson.dumps({"user": user, "objects": objects}),
                        media_type="application/json")

    async def listing(self, request: Request) -> Response:
        login = (await self.api.leased(request)).login
        prefix = request.query_params.get("prefix", layout.user_prefix(login))
        if not layout.is_below(prefix + "x", login):
            raise ApiError(403, "a prefix below the leased user only")
        shallow = request.query_params.get("shallow", "") in ("1", "true")
        store = await self.live_store()

        def read() -> list[dict[str, Any]]:
            out = []
            for info in store.list(prefix, shallow):
                out.append(info_json(info))
                if len(out) >= LIST_MAX:
                    break
            return out

        objects = await self.api.blocking(read)
        return Response(orjson.dumps({"objects": objects, "truncated": len(objects) >= LIST_MAX}),
                        media_type="application/json")

    # -- writes ------------------------------------------------------------------------------

    def metadata(self, raw: object, name: str) -> dict[str, str]:
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in raw.items()):
            raise ApiError(400, "metadata must be a JSON object of strings")
        meta = canonical({k: v for k, v in raw.items() if k.lower() != WORKER.lower()})
        meta[WORKER] = name
        try:
            return clean_metadata(meta)
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None

    async def put(self, request: Request) -> Response:
        key = request.path_params["key"]
        got = await self._key(request, key)
        name, login, member = got.name, got.login, got.member
        kind = layout.parse_key(key).kind
        if kind is layout.Kind.OTHER:
            raise ApiError(400, "not a key of the archive layout")
        try:
            meta_doc = orjson.loads(request.headers.get(METADATA_HEADER, "{}"))
        except orjson.JSONDecodeError:
            raise ApiError(400, f"{METADATA_HEADER} must be a JSON object") from None
        meta = self.metadata(meta_doc, name)
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise ApiError(411, "an upload needs its Content-Length")
        if kind is layout.Kind.USER and int(declared) > MAX_USER_OBJECT_BYTES:
            raise ApiError(413, f"a user object is at most {MAX_USER_OBJECT_BYTES} bytes")
        if int(declared) > self.max_upload_bytes:
            raise ApiError(413, f"an upload is at most serve.max_upload_mb "
                                f"({self.max_upload_bytes >> 20} MB)")
        path = await self._receive(request, kind, int(declared))
        try:
            fenced = await self._fenced(name, member)
            await self.api.blocking(fenced.put_file, key, path, meta)
        except LockLost:
            raise ApiError(409, f"the lease on {login} was lost: nothing written",
                           result="lost") from None
        finally:
            path.unlink(missing_ok=True)
        return Response(orjson.dumps({"key": key, "size": int(declared)}),
                        media_type="application/json")

    async def _receive(self, request: Request, kind: layout.Kind, declared: int) -> Path:
        """The body in a spool file, whole (its Content-Length exactly) and what its key says;
        nothing is left behind otherwise."""
        fd, name = tempfile.mkstemp(dir=self.spool, suffix=".part")
        path, size, first = Path(name), 0, b""
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > declared:
                        raise ApiError(400, "more bytes than the Content-Length")
                    if len(first) < MAGIC_BYTES:
                        first += chunk[:MAGIC_BYTES - len(first)]
                        if len(first) >= MAGIC_BYTES and (why := content_problem(kind, first,
                                                                                 size)):
                            raise ApiError(422, why)
                    out.write(chunk)
            if size != declared:
                raise ApiError(400, f"the upload ended at {size} of {declared} bytes")
            why = content_problem(kind, first, size)
            if not why and kind is layout.Kind.USER:
                why = await self.api.blocking(_not_a_list, path)
            if why:
                raise ApiError(422, why)
        except ClientDisconnect:
            path.unlink(missing_ok=True)
            raise ApiError(400, "the upload was cut off: nothing written") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def replace_metadata(self, request: Request) -> Response:
        key = request.path_params["key"]
        got = await self._key(request, key)
        name, member = got.name, got.member
        meta = self.metadata((await read_json(request)).get("metadata"), name)
        return await self._write(name, member, "replace_metadata", key, meta)

    async def copy(self, request: Request) -> Response:
        got = await self.api.authorize_user(request)  # 401 before the body is read
        doc = await read_json(request)
        src, dest = doc.get("from"), doc.get("to")
        if not isinstance(src, str) or not isinstance(dest, str):
            raise ApiError(400, 'body must be {"from": key, "to": key}')
        got = own(got, src, dest)
        return await self._write(got.name, got.member, "copy", src, dest)

    async def delete(self, request: Request) -> Response:
        key = request.path_params["key"]
        got = await self._key(request, key)
        name, member = got.name, got.member
        return await self._write(name, member, "delete", key)

    async def _write(self, name: str, member: str, op: str, *args: Any) -> Response:
        fenced = await self._fenced(name, member)
        try:
            await self.api.blocking(getattr(fenced, op), *args)
        except LockLost:
            raise ApiError(409, "the lease was lost: nothing written", result="lost") from None
        except StoreError as exc:  # NotFound: a copy's missing source
            if type(exc) is StoreError:
                raise
            raise ApiError(404, str(exc)) from None
        return Response(b'{"result":"done"}', media_type="application/json")

    def close(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)

    def routes(self) -> list[BaseRoute]:
        base = "/api/lease/{login}"
        return [
            Route(base + "/heads/{key:path}", guarded(self.head), methods=["GET"]),
            Route(base + "/objects/{key:path}", guarded(self.read), methods=["GET"]),
            Route(base + "/objects/{key:path}", guarded(self.put), methods=["PUT"]),
            Route(base + "/objects/{key:path}", guarded(self.delete), methods=["DELETE"]),
            Route(base + "/list", guarded(self.listing), methods=["GET"]),
            Route(base + "/state", guarded(self.state), methods=["GET"]),
            Route(base + "/metadata/{key:path}", guarded(self.replace_metadata),
                  methods=["POST"]),
            Route(base + "/copy", guarded(self.copy), methods=["POST"]),
        ]


def own(got: Leased, *keys: str) -> Leased:
    """``got`` when each of ``keys`` is its user's own and its token holds that user
    (403 otherwise: lease_api.held)."""
    if not got.login:
        return held(got)  # 403: not a login
    for key in keys:
        try:
            check_key(key)
        except StoreError:
            raise ApiError(403, "not a key of this user") from None
        if key != layout.user_key(got.login) and not layout.is_below(key, got.login):
            raise ApiError(403, f"{key[:200]!r} is not one of {got.login}'s keys")
    return held(got)


def _not_a_list(path: Path) -> str:
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return "the user object must be JSON"
    return "" if isinstance(doc, list) else "the user object must be a JSON array"


def _int(request: Request, name: str, default: int | None) -> Any:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise ApiError(400, f"{name} must be an integer >= 0")
    return int(text)
