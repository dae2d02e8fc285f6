"""Git LFS objects fetched through the git host's LFS batch API (the `basic` transfer),
bounded, with git's token rules (git/auth.py), sha256 checked while they stream.

- The batch request (`POST <clone_url>/info/lfs/objects/batch`, `application/vnd.git-lfs+json`,
  at most BATCH_OBJECTS objects each) goes to the git host, with the token (GitAuth: only to
  that host, only over its schemes); a redirect is not followed (an error for its objects).
- Each object's download `href` may be on another host (GitHub's LFS storage is): the token
  goes with it only when GitAuth would send it there (the git host itself); the `header` the
  batch answer gives for the href (GitHub's short-lived storage credential) is sent as given.
  Nothing else travels: not the token to another host, not a redirect followed (an object
  whose download answers 3xx fails, recorded).
- An object is read to a file under the caller's scratch folder, at most its pointer's size
  (and at most the cap the caller gives), and kept only when its length and sha256 are the
  pointer's.
Every failure is one object's `LfsFailure` (one line), never an exception for the others.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import urllib3

from bulkbackup.git.auth import GitAuth
from bulkbackup.http.bounded import BoundedPool, Overdue, SlowRead, TooLarge
from bulkbackup.redact import redact

LFS_TYPE = "application/vnd.git-lfs+json"
BATCH_OBJECTS = 100  # objects per batch request (GitHub's limit)
MAX_BATCH_ANSWER_BYTES = 8 << 20
MAX_HEADERS = 16  # headers a batch answer may give one download
READ_S = 120.0  # one socket read waiting longer is a stall


@dataclass(frozen=True)
class Download:
    """Where one object is downloaded from (the batch answer's `actions.download`)."""

    oid: str
    size: int
    href: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class LfsFailure:
    oid: str
    reason: str


def batch_url(clone_url: str) -> str:
    """GitHub's LFS endpoint: `<clone_url>/info/lfs` (clone URLs end in `.git`)."""
    base = clone_url.rstrip("/")
    return (base if base.endswith(".git") else base + ".git") + "/info/lfs/objects/batch"


def batch(pool: BoundedPool, clone_url: str, objects: Mapping[str, int], auth: GitAuth,
          ends: float) -> tuple[list[Download], list[LfsFailure]]:
    """Where each of ``objects`` (oid -> size) is downloaded from, or why it cannot be."""
    url = batch_url(clone_url)
    downloads: list[Download] = []
    failures: list[LfsFailure] = []
    items = list(objects.items())
    for start in range(0, len(items), BATCH_OBJECTS):
        chunk = dict(items[start:start + BATCH_OBJECTS])
        try:
            got = _batch_once(pool, url, chunk, auth, ends)
        except _BatchFailed as exc:
            failures += [LfsFailure(oid, str(exc)) for oid in chunk]
            continue
        for oid, size in chunk.items():
            answer = got.get(oid)
            if isinstance(answer, Download):
                downloads.append(Download(oid, size, answer.href, answer.headers))
            else:
                failures.append(LfsFailure(oid, answer or "not in the LFS batch answer"))
    return downloads, failures


class _BatchFailed(Exception):
    pass


def _batch_once(pool: BoundedPool, url: str, chunk: Mapping[str, int], auth: GitAuth,
                ends: float) -> dict[str, Download | str]:
    body = orjson.dumps({"operation": "download", "transfers": ["basic"],
                         "objects": [{"oid": o, "size": s} for o, s in chunk.items()]})
    headers = {"Accept": LFS_TYPE, "Content-Type": LFS_TYPE}
    token = auth.authorization(url)
    if token:
        headers["Authorization"] = token
    try:
        status, _, raw = pool.request("POST", url, headers, ends=ends,
                                      max_bytes=MAX_BATCH_ANSWER_BYTES, read_s=READ_S,
                                      body=body)
    except (Overdue, SlowRead, TooLarge, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _BatchFailed(f"LFS batch request failed: {_line(exc)}") from None
    if status != 200:
        raise _BatchFailed(f"LFS batch request answered HTTP {status}")
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BatchFailed("LFS batch answer is not JSON") from None
    listed = answer.get("objects") if isinstance(answer, dict) else None
    if not isinstance(listed, list):
        raise _BatchFailed("LFS batch answer without objects")
    return {o["oid"]: _one(o) for o in listed
            if isinstance(o, dict) and isinstance(o.get("oid"), str) and o["oid"] in chunk}


def _one(entry: dict[str, Any]) -> Download | str:
    """One object of the batch answer: where to download it, or why not."""
    error = entry.get("error")
    if isinstance(error, dict):
        return f"LFS server: {error.get('code')} {_text(error.get('message'))}"
    actions = entry.get("actions")
    download = actions.get("download") if isinstance(actions, dict) else None
    if not isinstance(download, dict) or not isinstance(download.get("href"), str):
        return "no download action in the LFS batch answer"
    href = download["href"]
    parts = urlsplit(href)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username \
            or parts.password:
        return f"refusing LFS download URL {_text(href)!r}"
    given = download.get("header") or {}
    if not isinstance(given, dict) or len(given) > MAX_HEADERS or not all(
            _safe_header(k, v) for k, v in given.items()):
        return "refusing the LFS batch answer's download headers"
    return Download(str(entry["oid"]), 0, href, dict(given))


def _safe_header(name: object, value: object) -> bool:
    return (isinstance(name, str) and isinstance(value, str) and 0 < len(name) <= 100
            and name.replace("-", "").isalnum() and name.isascii() and len(value) <= 8192
            and value.isascii() and value.isprintable())


def download(pool: BoundedPool, item: Download, dest: Path, auth: GitAuth,
             ends: float) -> LfsFailure | None:
    """Stream ``item`` to ``dest``, checking its length and sha256; None when it is good
    (``dest`` holds it), else why not (``dest`` removed)."""
    headers = dict(item.headers)
    token = auth.authorization(item.href)
    if token and not any(k.lower() == "authorization" for k in headers):
        headers["Authorization"] = token  # the git host itself: git would send it
    digest = hashlib.sha256()
    try:
        with pool.open("GET", item.href, headers, ends=ends, max_bytes=item.size,
                       read_s=READ_S) as answer, dest.open("wb") as out:
            if answer.status != 200:
                where = urlsplit(answer.headers.get("Location", "")).netloc
                moved = f" to {_text(where)!r}: not followed" if 300 <= answer.status < 400 \
                    else ""
                return _failed(dest, item, f"download answered HTTP {answer.status}{moved}")
            for chunk in iter(answer.read1, b""):
                digest.update(chunk)
                out.write(chunk)
            size = answer.size
    except TooLarge:
        return _failed(dest, item, f"the download is larger than its pointer's {item.size} "
                                   "bytes")
    except (Overdue, SlowRead, urllib3.exceptions.HTTPError, OSError) as exc:
        return _failed(dest, item, f"download failed: {_line(exc)}")
    if size != item.size:
        return _failed(dest, item, f"{size} bytes downloaded, the pointer says {item.size}")
    if digest.hexdigest() != item.oid:
        return _failed(dest, item, "sha256 mismatch: the content is not the pointer's object")
    return None


def _failed(dest: Path, item: Download, reason: str) -> LfsFailure:
    dest.unlink(missing_ok=True)
    return LfsFailure(item.oid, reason)


def _line(exc: BaseException) -> str:
    return _text(redact(str(exc) or type(exc).__name__))


def _text(value: object) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in str(value)[:200]).split())


def deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s
