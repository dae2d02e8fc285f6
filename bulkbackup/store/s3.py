"""The durable store in an S3-compatible bucket (Storj gateway, MinIO, R2, AWS).

Only calls every such gateway supports are used: PutObject, multipart upload, HeadObject,
GetObject, CopyObject onto itself (metadata), ListObjectsV2, DeleteObject. Endpoint and
credentials come from boto3's own environment variables.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from bulkbackup.config import StoreSettings
from bulkbackup.errors import NotFound, StoreError
from bulkbackup.store.base import Head, ObjectInfo, Store, check_key, clean_metadata

_MIB = 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}
_T = TypeVar("_T")
# What boto3 raises for a failed call, after its own retries.
_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.Boto3Error)


def _code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _one_line(exc: BaseException) -> str:
    # botocore messages name the operation and the server's reason; never the credentials.
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _content_type(key: str) -> str:
    """The Content-Type of every object: derived from its key, so a metadata-replacing copy
    can set it again without first asking the store for it (one request fewer)."""
    if "/" not in key:
        return "application/json"
    if key.endswith(".zip"):
        return "application/zip"
    if key.endswith(".bundle"):
        return "application/x-git-bundle"
    return "application/octet-stream"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class _Body(io.RawIOBase):
    """A GetObject body as a file object whose read errors are StoreErrors."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self._read(None)

    def _read(self, size: int | None) -> bytes:
        try:
            return bytes(self._body.read(size))
        except (*_BOTO_ERRORS, OSError) as exc:
            raise StoreError(f"cannot read {self._key!r}: {_one_line(exc)}") from None

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store(Store):
    byte_ordered = True

    def __init__(self, settings: StoreSettings, threads: int = 1) -> None:
        bucket = settings.url.removeprefix("s3://").rstrip("/")
        if not bucket or "/" in bucket:
            raise StoreError(f"store.url must be s3://BUCKET, not {settings.url!r}")
        self.bucket = bucket
        self.settings = settings
        self._requests = 0
        self._lock = threading.Lock()
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": "path"},  # bucket names with dots (github.com)
            max_pool_connections=max(settings.max_pool_connections, threads + 2),
            connect_timeout=10,
            read_timeout=120,
        )
        try:
            # A fresh session: the default one is shared module state, unsafe across forks.
            self._client: Any = boto3.session.Session().client("s3", config=config)
        except _BOTO_ERRORS as exc:
            raise StoreError(f"cannot create the S3 client: {_one_line(exc)}") from None
        # Every HTTP request, retries included: what a gateway counts and bills.
        self._client.meta.events.register("before-send.s3.*", self._on_send)
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold_mb * _MIB,
            multipart_chunksize=settings.multipart_part_mb * _MIB,
            use_threads=False,  # one part in memory at a time; workers parallelise users
        )
        self._check_bucket()

    def _on_send(self, **_: Any) -> None:
        with self._lock:
            self._requests += 1

    @property
    def request_count(self) -> int:
        return self._requests

    def _call(self, key: str, action: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except _BOTO_ERRORS as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"no such object: {key!r}") from None
            raise StoreError(f"cannot {action} {key!r}: {_one_line(exc)}") from None

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except _BOTO_ERRORS as exc:
            if _code(exc) not in _NO_BUCKET:
                raise StoreError(f"cannot access bucket {self.bucket}: {_one_line(exc)}") from None
        if not self.settings.create_bucket:
            raise StoreError(f"bucket {self.bucket} does not exist "
                             "(set store.create_bucket: true to create it)")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except _BOTO_ERRORS as exc:
            # Several worker processes start at once: one of them wins the race.
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StoreError(f"cannot create bucket {self.bucket}: {_one_line(exc)}"
                                 ) from None

    # -- writes ------------------------------------------------------------------------------

    def _extra(self, key: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        return {"Metadata": clean_metadata(metadata), "ContentType": _content_type(key)}

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str]) -> None:
        extra = self._extra(check_key(key), metadata)
        # Above the threshold this is a multipart upload: the object appears only when it
        # completes, and a failure aborts it (no orphaned parts are left on purpose).
        try:
            self._call(key, "store", lambda: self._client.upload_file(
                str(path), self.bucket, key, ExtraArgs=extra, Config=self._transfer))
        except OSError as exc:
            raise StoreError(f"cannot store {key!r}: {exc.strerror or _one_line(exc)}") from None

    def put_fileobj(self, key: str, src: BinaryIO, metadata: Mapping[str, str]) -> None:
        """Store what ``src`` yields until EOF; nothing appears if reading it fails."""
        extra = self._extra(check_key(key), metadata)
        try:
            self._call(key, "store", lambda: self._client.upload_fileobj(
                src, self.bucket, key, ExtraArgs=extra, Config=self._transfer))
        except OSError as exc:
            raise StoreError(f"cannot store {key!r}: {exc.strerror or _one_line(exc)}") from None

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        extra = self._extra(check_key(key), metadata)
        self._call(key, "store", lambda: self._client.put_object(
            Bucket=self.bucket, Key=key, Body=data, **extra))

    def replace_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        extra = self._extra(check_key(key), metadata)
        # The client's CopyObject, not the managed copy(): that one switches to
        # UploadPartCopy for large objects, which Storj does not implement.
        self._call(key, "update metadata of", lambda: self._client.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
            MetadataDirective="REPLACE", **extra))

    def delete(self, key: str) -> None:
        check_key(key)
        with contextlib.suppress(NotFound):  # S3 itself answers 204 for missing keys
            self._call(key, "delete", lambda: self._client.delete_object(
                Bucket=self.bucket, Key=key))

    # -- reads -------------------------------------------------------------------------------

    def head(self, key: str) -> Head | None:
        check_key(key)
        try:
            resp = self._call(key, "read", lambda: self._client.head_object(
                Bucket=self.bucket, Key=key))
        except NotFound:
            return None
        meta = {str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()}
        return Head(size=int(resp["ContentLength"]), last_modified=_utc(resp["LastModified"]),
                    metadata=meta)

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        resp = self._call(key, "open", lambda: self._client.get_object(
            Bucket=self.bucket, Key=key))
        return io.BufferedReader(_Body(resp["Body"], key), buffer_size=_MIB)

    # -- listings ----------------------------------------------------------------------------

    def _pages(self, what: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, **kwargs,
                                   PaginationConfig={"PageSize": self.settings.list_page_size})
        try:
            yield from pages
        except _BOTO_ERRORS as exc:
            raise StoreError(f"cannot list {what}: {_one_line(exc)}") from None

    @staticmethod
    def _infos(page: Mapping[str, Any]) -> Iterator[ObjectInfo]:
        for obj in page.get("Contents") or ():
            yield ObjectInfo(str(obj["Key"]), int(obj["Size"]), _utc(obj["LastModified"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for page in self._pages(repr(prefix) if prefix else "the store", Prefix=prefix):
            yield from self._infos(page)

    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # With a delimiter each user's folder is one CommonPrefixes entry, not a page of keys.
        for page in self._pages("the users", Delimiter="/", Prefix=prefix):
            yield from self._infos(page)

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_key(key)
        if not start and end is None:
            return self.open(key)
        wanted = f"bytes={start}-{'' if end is None else end}"
        resp = self._call(key, "open", lambda: self._client.get_object(
            Bucket=self.bucket, Key=key, Range=wanted))
        return io.BufferedReader(_Body(resp["Body"], key), buffer_size=_MIB)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        check_key(key)
        name = key.rsplit("/", 1)[-1]
        return str(self._call(key, "sign", lambda: self._client.generate_presigned_url(
            "get_object", ExpiresIn=expires_s, Params={
                "Bucket": self.bucket, "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{name}"'})))

    def close(self) -> None:
        self._client.close()
