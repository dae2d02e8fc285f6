"""The local store's temp files: named after their writer, so leftovers can be recognised.

A write in progress is `<root>/%incoming/%tmp-<host>-<pid>-<random>`: one folder on the store's
file system (renames out of it are atomic), so cleaning up is one directory read, not a walk of
millions of user folders. A writer killed mid-write (SIGKILL, power cut) leaves its file there.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import time
from pathlib import Path

PREFIX = "%tmp-"
INCOMING = "%incoming"
STALE_AGE_S = 24 * 3600


def _host_tag() -> str:
    """This host's name as it may appear in a temp file's name (without `-`, the separator)."""
    name = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64]
    return name or "_"


HOST = _host_tag()


def new_path(root: Path) -> Path:
    """A fresh temp file name for a write by this process."""
    folder = root / INCOMING
    folder.mkdir(exist_ok=True)
    return folder / f"{PREFIX}{HOST}-{os.getpid()}-{secrets.token_hex(8)}"


def writer_is_gone(name: str) -> bool:
    """Was temp file ``name`` written on this host by a process that no longer exists?"""
    host, _, rest = name.removeprefix(PREFIX).partition("-")
    pid_text = rest.partition("-")[0]
    if host != HOST or not pid_text.isdigit():
        return False  # another host's (or an older version's): only its age tells
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, owned by another user
    return False


def clean(root: Path, max_age_s: float) -> int:
    """Remove the temp files under ``root`` whose writer is gone, or older than
    ``max_age_s``; how many. Raises OSError when the folder cannot be read."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(root / INCOMING))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        with contextlib.suppress(FileNotFoundError):  # its writer just committed it
            age_s = now - entry.stat(follow_symlinks=False).st_mtime
            if age_s > max_age_s or writer_is_gone(entry.name):
                os.unlink(entry.path)
                removed += 1
    return removed
