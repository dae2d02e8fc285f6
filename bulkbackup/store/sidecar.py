"""The local store's metadata sidecars: `<file>%meta`, a JSON document naming the inode (and
size) of the data it describes, for the new data (`cur`) and the data still in place (`prev`),
so a reader that matches the data file in place gets that data's metadata whatever the moment
of a crash (see local.py)."""

from __future__ import annotations

import json
import os
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


def entry_for(doc: Mapping[str, Any], st: os.stat_result) -> dict[str, Any] | None:
    """The entry of ``doc`` that describes the data file ``st`` is of, if any."""
    # The size guards against an inode freed by an earlier put and reused by a file
    # written into the store by hand: such a file must not inherit old metadata.
    for slot in ("cur", "prev"):
        entry = doc.get(slot)
        if (isinstance(entry, dict) and entry.get("ino") == st.st_ino
                and entry.get("size", st.st_size) == st.st_size):
            return entry
    return None


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
