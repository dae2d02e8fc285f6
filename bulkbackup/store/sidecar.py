"""The local store's metadata sidecars: `<file>%meta`, a JSON document naming the inode, size
and content fingerprint of the data it describes, for the new data (`cur`) and the data still
in place (`prev`), so a reader that matches the data file in place gets that data's metadata
whatever the moment of a crash (see local.py). The inode is the quick match; the fingerprint
keeps the match when the store is copied (cp -r, rsync, tar: every inode changes)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

META_SUFFIX = "%meta"


def meta_path(data: Path) -> Path:
    return data.with_name(data.name + META_SUFFIX)


def read(data: Path) -> dict[str, Any]:
    """The sidecar of ``data`` ({} when there is none or it is damaged)."""
    try:
        raw = meta_path(data).read_bytes()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        # Sidecars are replaced atomically, so this is outside damage: an entry without
        # metadata only makes the next run sync the object again.
        return {}
    return doc if isinstance(doc, dict) else {}


# Bytes read at each end of a file for its fingerprint: a bundle ends with its pack's
# checksum and a zip with its central directory, so the ends tell contents apart.
_EDGE_BYTES = 4096


def fingerprint(fd: int, size: int) -> str:
    """A fingerprint of the open file ``fd`` of ``size`` bytes: its size and both ends."""
    digest = hashlib.sha256(str(size).encode("ascii"))
    digest.update(os.pread(fd, _EDGE_BYTES, 0))
    if size > _EDGE_BYTES:
        digest.update(os.pread(fd, _EDGE_BYTES, max(_EDGE_BYTES, size - _EDGE_BYTES)))
    return digest.hexdigest()[:32]


def new_entry(fd: int, meta: Mapping[str, str]) -> dict[str, Any]:
    """The sidecar entry of the open data file ``fd`` carrying ``meta``."""
    st = os.fstat(fd)
    return {"ino": st.st_ino, "size": st.st_size, "fp": fingerprint(fd, st.st_size),
            "meta": dict(meta)}


def entry_for(doc: Mapping[str, Any], st: os.stat_result,
              data: Path | int) -> dict[str, Any] | None:
    """The entry of ``doc`` that describes the data file ``st`` is of (``data``: its path or
    an open descriptor of it), if any."""
    entries = [e for e in (doc.get("cur"), doc.get("prev"))
               if isinstance(e, dict) and e.get("size", st.st_size) == st.st_size]
    # The size guards against an inode freed by an earlier put and reused by a file
    # written into the store by hand: such a file must not inherit old metadata.
    for entry in entries:
        if entry.get("ino") == st.st_ino:
            return entry
    # Another inode: a copied store (or a file put there by hand). Its contents decide.
    if not entries:
        return None
    if any("fp" in e for e in entries):
        found = _content_of(data, st.st_size)
        return next((e for e in entries if e.get("fp") == found), None)
    # A sidecar written before fingerprints: only a size that names one entry matches.
    return entries[0] if len(entries) == 1 else None


def _content_of(data: Path | int, size: int) -> str | None:
    if isinstance(data, int):
        return fingerprint(data, size)
    try:
        # O_NONBLOCK: a FIFO put there by hand must not hang the reader.
        fd = os.open(data, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return fingerprint(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make ``folder``'s entries (a rename into it) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)
