"""The stand-in's Git LFS side: pointer files for a repository's content, the LFS batch API
(`POST /<login>/<repo>.git/info/lfs/objects/batch`, the `basic` transfer) and the object
downloads (`GET /lfs-objects/<oid>`), with hostile modes per object (`LfsObject.mode`).

A "CDN" host is the same server under its other name (`127.0.0.1` <-> `localhost`): to the
client another host, so the git token must not go there (tests read `ForgeState.lfs_seen`:
(host, oid, Authorization or None) of every download).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

LFS_TYPE = "application/vnd.git-lfs+json"
DOWNLOAD_PATH = "/lfs-objects/"
# What the batch answer's `header` carries for a download on the CDN (as GitHub's storage
# credential): the client sends it as given.
CDN_AUTH = "RemoteAuth cdn-credential"

# Modes of an object:
NORMAL = "normal"  # downloaded from the git host itself (the client sends its token)
CDN = "cdn"  # href on the other host, with a `header` of its own (CDN_AUTH)
CDN_BARE = "cdn-bare"  # href on the other host, no header: nothing may be sent
MISSING = "missing"  # the batch answers the object's error 404
MISMATCH = "mismatch"  # the download's bytes are not the pointer's (same length)
LONGER = "longer"  # the download sends more bytes than the pointer's size
REDIRECT = "redirect"  # the download answers 302 to the other host
HUGE = "huge"  # the pointer claims 50 GB (never asked for under any sane cap)
MODES = (NORMAL, CDN, CDN_BARE, MISSING, MISMATCH, LONGER, REDIRECT, HUGE)


@dataclass(frozen=True)
class LfsObject:
    content: bytes
    mode: str = NORMAL

    @property
    def oid(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def size(self) -> int:
        return 50 << 30 if self.mode == HUGE else len(self.content)

    def pointer(self) -> bytes:
        return (b"version https://git-lfs.github.com/spec/v1\n"
                b"oid sha256:%s\nsize %d\n" % (self.oid.encode(), self.size))


def files_with_pointers(files: dict[str, bytes], lfs: dict[str, LfsObject]) -> dict[str, bytes]:
    """``files`` plus each LFS path as its pointer, and the `.gitattributes` that says so."""
    if not lfs:
        return files
    attributes = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in sorted(lfs))
    return {**files, ".gitattributes": attributes.encode(),
            **{p: o.pointer() for p, o in lfs.items()}}


def other_host(netloc: str) -> str:
    """The same server under its other name (the "CDN")."""
    host, _, port = netloc.rpartition(":")
    return f"{'localhost' if host == '127.0.0.1' else '127.0.0.1'}:{port}"


def batch_answer(objects: dict[str, LfsObject], body: bytes, netloc: str
                 ) -> tuple[int, bytes, dict[str, str]]:
    """The batch API's answer to ``body`` (the known objects: ``objects``, by oid)."""
    try:
        asked = json.loads(body)["objects"]
    except (ValueError, KeyError, TypeError):
        return 422, b'{"message": "bad request"}', {"Content-Type": LFS_TYPE}
    out = [_object(objects.get(str(o.get("oid"))), o, netloc) for o in asked
           if isinstance(o, dict)]
    return 200, json.dumps({"transfer": "basic", "objects": out}).encode(), {
        "Content-Type": LFS_TYPE}


def _object(obj: LfsObject | None, asked: dict[str, Any], netloc: str) -> dict[str, Any]:
    oid, size = asked.get("oid"), asked.get("size")
    if obj is None or obj.mode == MISSING:
        return {"oid": oid, "size": size,
                "error": {"code": 404, "message": "Object does not exist"}}
    host = other_host(netloc) if obj.mode in (CDN, CDN_BARE) else netloc
    download: dict[str, Any] = {"href": f"http://{host}{DOWNLOAD_PATH}{oid}"}
    if obj.mode == CDN:
        download["header"] = {"Authorization": CDN_AUTH}
    return {"oid": oid, "size": size, "authenticated": True, "actions": {"download": download}}


def object_answer(obj: LfsObject | None, netloc: str, path: str
                  ) -> tuple[int, bytes, dict[str, str]]:
    """A download: the object's bytes (or its hostile mode's answer)."""
    if obj is None or obj.mode == MISSING:
        return 404, b"not found\n", {}
    if obj.mode == REDIRECT:
        return 302, b"", {"Location": f"http://{other_host(netloc)}{path}"}
    data = obj.content
    if obj.mode == MISMATCH:
        data = bytes(b ^ 0xFF for b in data)
    elif obj.mode == LONGER:
        data += b"and then some more bytes than the pointer says\n"
    return 200, data, {"Content-Type": "application/octet-stream"}
