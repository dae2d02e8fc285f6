"""The durable store in an S3-compatible bucket (Storj gateway, MinIO, R2, AWS).

Only calls every such gateway supports are used: PutObject, multipart upload, HeadObject,
GetObject, CopyObject onto itself (metadata), ListObjectsV2, AbortMultipartUpload. Endpoint and
credentials come from boto3's own environment variables.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import boto3.exceptions
import botocore.exceptions
from botocore.config import Config
from s3transfer.utils import ReadFileChunk

from bulkbackup.config import StoreSettings
from bulkbackup.errors import ConfigError, NotFound, StoreError, one_line
from bulkbackup.store.base import (
    BeforeCommit,
    Head,
    Store,
    check_key,
    check_range,
    clean_metadata,
    content_type,
    no_fence,
)
from bulkbackup.store.listing import ObjectInfo

_MIB = 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}
_T = TypeVar("_T")
_MAX_PARTS = 10_000  # S3's limit on the parts of one upload
# The requests that make an object visible: each attempt is fenced (see S3Store._committing).
_COMMITS = ("PutObject", "CompleteMultipartUpload", "CopyObject")
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256",
                   "ChecksumCRC64NVME")


class _Fence(threading.local):
    before_commit: BeforeCommit | None = None


# The write in progress on this thread (a client is used by one write at a time per thread).
_FENCE = _Fence()


def _fence_hook(**_: Any) -> None:
    """botocore's before-send event: raising here sends nothing, and is not retried."""
    if _FENCE.before_commit is not None:
        _FENCE.before_commit()
# What boto3 raises for a failed call, after its own retries.
_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.Boto3Error)


def _code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


# Credentials missing or incomplete: as refused ones, only a change of setup helps.
_NO_CREDENTIALS = (botocore.exceptions.NoCredentialsError,
                   botocore.exceptions.PartialCredentialsError)
# Answers that no retry or restart can change: the configuration must be fixed.
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
            "InvalidBucketName", "AllAccessDisabled", "AccountProblem"}


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
            raise StoreError(f"cannot read {self._key!r}: {one_line(exc)}") from None

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store(Store):
    byte_ordered = True

    def __init__(self, settings: StoreSettings, threads: int = 1, create: bool = True) -> None:
        """``create=False``: read-only use; a missing bucket is an error, never created."""
        bucket = settings.url.removeprefix("s3://").rstrip("/")
        if not bucket or "/" in bucket:
            raise ConfigError(f"store.url must be s3://BUCKET, not {settings.url!r}")
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
        except (*_BOTO_ERRORS, ValueError) as exc:  # ValueError: a malformed endpoint URL
            raise ConfigError(f"cannot create the S3 client: {one_line(exc)}") from None
        # Every HTTP request, retries included: what a gateway counts and bills.
        self._client.meta.events.register("before-send.s3.*", self._on_send)
        self._check_bucket(create and settings.create_bucket)

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
            raise StoreError(f"cannot {action} {key!r}: {one_line(exc)}") from None

    def _check_bucket(self, create: bool) -> None:
        """The bucket exists and these credentials may use it, or a ConfigError (exit 2: a
        restart cannot help) — except a failure that may pass (network, 5xx): StoreError."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ParamValidationError as exc:  # e.g. an invalid bucket name
            raise ConfigError(f"store.url {self.settings.url!r}: {one_line(exc)}") from None
        except _NO_CREDENTIALS as exc:  # none found, or half of them: the setup is wrong
            raise ConfigError(f"no usable S3 credentials for bucket {self.bucket} (set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE): "
                              f"{one_line(exc)}") from None
        except _BOTO_ERRORS as exc:
            code = _code(exc)
            if code in _REFUSED:
                raise ConfigError(f"the store refuses access to bucket {self.bucket} "
                                  f"(check the credentials): {one_line(exc)}") from None
            if code not in _NO_BUCKET:
                raise StoreError(f"cannot access bucket {self.bucket}: {one_line(exc)}") from None
        if not create:
            raise ConfigError(f"bucket {self.bucket} does not exist" + (
                " (set store.create_bucket: true to create it)"
                if not self.settings.create_bucket else ""))
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except _BOTO_ERRORS as exc:
            # Several worker processes start at once: one of them wins the race.
            code = _code(exc)
            if code in _REFUSED or isinstance(exc, botocore.exceptions.ParamValidationError):
                raise ConfigError(f"cannot create bucket {self.bucket}: {one_line(exc)}"
                                  ) from None
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StoreError(f"cannot create bucket {self.bucket}: {one_line(exc)}"
                                 ) from None

    # -- writes ------------------------------------------------------------------------------

    def _extra(self, key: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        # The Content-Type is derived from the key, so a metadata-replacing copy can set it
        # again without first asking the store for it (one request fewer).
        return {"Metadata": clean_metadata(metadata), "ContentType": content_type(key)}

    @contextlib.contextmanager
    def _committing(self, before_commit: BeforeCommit) -> Iterator[None]:
        """Within: ``before_commit`` runs right before each attempt (retries included) of a
        request that makes an object visible, so a retry long after a pause is fenced too."""
        for operation in _COMMITS:
            # Registered on first use (the same unique id registers once per client).
            self._client.meta.events.register(f"before-send.s3.{operation}", _fence_hook,
                                              unique_id=f"bulkbackup-fence-{operation}")
        _FENCE.before_commit = before_commit
        try:
            yield
        finally:
            _FENCE.before_commit = None

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str],
                 before_commit: BeforeCommit = no_fence) -> None:
        extra = self._extra(check_key(key), metadata)
        try:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                if size < self.settings.multipart_threshold_mb * _MIB:
                    with self._committing(before_commit):
                        self._call(key, "store", lambda: self._client.put_object(
                            Bucket=self.bucket, Key=key, Body=src, **extra))
                else:
                    self._multipart(key, src, size, extra, before_commit)
        except OSError as exc:
            raise StoreError(f"cannot store {key!r}: {exc.strerror or one_line(exc)}") from None

    def _multipart(self, key: str, src: BinaryIO, size: int, extra: Mapping[str, Any],
                   before_commit: BeforeCommit) -> None:
        """A multipart upload done here, not by boto3's transfer manager, so that the commit
        (CompleteMultipartUpload) is fenced and any failure aborts the upload: no orphaned
        parts. No part is held in memory: each is streamed from the file (a bounded,
        seekable slice, so a retry or a checksum re-reads it from disk); workers
        parallelise users, not parts."""
        part_bytes = max(self.settings.multipart_part_mb * _MIB, -(-size // _MAX_PARTS))
        upload_id = str(self._call(key, "store", lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, **extra))["UploadId"])
        try:
            parts: list[dict[str, Any]] = []
            for start in range(0, size, part_bytes):
                src.seek(start)
                body = ReadFileChunk(src, part_bytes, size, enable_callbacks=False)
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, body))
            with self._committing(before_commit):
                self._call(key, "store", lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts}))
        except BaseException:
            with contextlib.suppress(*_BOTO_ERRORS):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                    UploadId=upload_id)
            raise

    def _upload_part(self, key: str, upload_id: str, number: int, body: ReadFileChunk
                     ) -> dict[str, Any]:
        resp = self._call(key, "store", lambda: self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body))
        part: dict[str, Any] = {"PartNumber": number, "ETag": resp["ETag"]}
        for name in _PART_CHECKSUMS:  # flexible checksums sent with a part are completed with it
            if resp.get(name):
                part[name] = resp[name]
        return part

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                  before_commit: BeforeCommit = no_fence) -> None:
        extra = self._extra(check_key(key), metadata)
        with self._committing(before_commit):
            self._call(key, "store", lambda: self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, **extra))

    def replace_metadata(self, key: str, metadata: Mapping[str, str],
                         before_commit: BeforeCommit = no_fence) -> None:
        extra = self._extra(check_key(key), metadata)
        # The client's CopyObject, not the managed copy(): that one switches to
        # UploadPartCopy for large objects, which Storj does not implement.
        with self._committing(before_commit):
            self._call(key, "update metadata of", lambda: self._client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE", **extra))

    def copy(self, src: str, dest: str, before_commit: BeforeCommit = no_fence) -> None:
        check_key(src)
        check_key(dest)
        if src == dest:  # S3 refuses a CopyObject onto itself that changes nothing
            if self.head(src) is None:
                raise NotFound(f"no such object: {src!r}")
            before_commit()
            return
        # CopyObject (up to 5 GB, as replace_metadata): the managed copy's UploadPartCopy is
        # not implemented by every S3-compatible store.
        with self._committing(before_commit):
            self._call(src, "copy", lambda: self._client.copy_object(
                Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": src},
                MetadataDirective="COPY"))

    def copy_as(self, src: str, dest: str, metadata: Mapping[str, str],
                before_commit: BeforeCommit = no_fence) -> None:
        """``src`` copied to ``dest`` with ``metadata`` in one CopyObject (up to 5 GB): a
        staged upload made an archive (web/lease_uploads.py)."""
        check_key(src)
        extra = self._extra(check_key(dest), metadata)
        with self._committing(before_commit):
            self._call(src, "copy", lambda: self._client.copy_object(
                Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": src},
                MetadataDirective="REPLACE", **extra))

    def delete(self, key: str, before_commit: BeforeCommit = no_fence) -> None:
        check_key(key)
        before_commit()
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
                    metadata=meta, version=str(resp.get("ETag") or ""))

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        check_key(key)
        check_range(start, end)
        if end == start:  # nothing to read, but a missing key is still NotFound
            if self.head(key) is None:
                raise NotFound(f"no such object: {key!r}")
            return io.BytesIO(b"")
        extra: dict[str, Any] = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            resp = self._call(key, "open", lambda: self._client.get_object(
                Bucket=self.bucket, Key=key, **extra))
        except StoreError as exc:
            if "InvalidRange" not in str(exc):
                raise
            return io.BytesIO(b"")  # the range starts at or after the end: no bytes
        return io.BufferedReader(_Body(resp["Body"], key), buffer_size=_MIB)

    # -- listings ----------------------------------------------------------------------------

    def _pages(self, what: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, **kwargs,
                                   PaginationConfig={"PageSize": self.settings.list_page_size})
        try:
            yield from pages
        except _BOTO_ERRORS as exc:
            raise StoreError(f"cannot list {what}: {one_line(exc)}") from None

    @staticmethod
    def _infos(page: Mapping[str, Any]) -> Iterator[ObjectInfo]:
        for obj in page.get("Contents") or ():
            yield ObjectInfo(str(obj["Key"]), int(obj["Size"]), _utc(obj["LastModified"]))

    def list(self, prefix: str = "", shallow: bool = False) -> Iterator[ObjectInfo]:
        extra = {"Delimiter": "/"} if shallow else {}
        for page in self._pages(repr(prefix) if prefix else "the store", Prefix=prefix,
                                **extra):
            yield from self._infos(page)

    def list_top(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if "/" in prefix:  # no top-level key has one (S3 would list the keys below it)
            return
        # With a delimiter each user's folder is one CommonPrefixes entry, not a page of keys.
        for page in self._pages("the users", Delimiter="/", Prefix=prefix):
            yield from self._infos(page)

    def presigned_url(self, key: str, expires_s: int, file_name: str = "") -> str | None:
        check_key(key)
        name = file_name or key.rsplit("/", 1)[-1]
        return str(self._call(key, "sign", lambda: self._client.generate_presigned_url(
            "get_object", ExpiresIn=expires_s, Params={
                "Bucket": self.bucket, "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{name}"'})))

    def signed_put(self, key: str, expires_s: int) -> str:
        """A PUT of ``key`` signed for ``expires_s``: whoever holds it may write that key
        alone until it expires (a credential: never log it)."""
        check_key(key)
        return str(self._call(key, "sign", lambda: self._client.generate_presigned_url(
            "put_object", ExpiresIn=expires_s, Params={"Bucket": self.bucket, "Key": key})))

    def signed_get(self, key: str, expires_s: int) -> str:
        """A GET of ``key`` signed for ``expires_s`` (signed here: no request is sent), for
        serve to fetch itself (web/s3_stream.py) with a Range header of its own. Counted as
        the request it becomes. The URL is a credential until it expires: never log it."""
        check_key(key)
        url = str(self._call(key, "sign", lambda: self._client.generate_presigned_url(
            "get_object", ExpiresIn=expires_s, Params={"Bucket": self.bucket, "Key": key})))
        self._on_send()
        return url

    def close(self) -> None:
        self._client.close()
