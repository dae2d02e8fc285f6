"""Per-process work folders, and the removal of those a killed process left behind.

A folder `bulkbackup-<name>-<random>` under `run.work_dir` (or the temporary directory) holds
a file `.owner` (the owner's pid and host, for an operator) that its process keeps locked
(flock) for its whole life. The kernel drops the lock when the process dies, however it dies,
so a folder whose lock can be taken belongs to nobody: `clean_stale` removes those, and only
those. A flock, not the pid alone: a pid is reused, and names no process of another machine
sharing the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bulkbackup.config import Settings

log = logging.getLogger(__name__)

PREFIX = "bulkbackup-"
OWNER_FILE = ".owner"
# A folder without an owner file comes from a version without them (or a process killed in
# the instant it made one): removed once unchanged this long, as a process of that version
# may still be using it.
UNOWNED_GRACE_S = 24 * 3600.0


def base_dir(settings: Settings) -> Path:
    return Path(settings.run.work_dir) if settings.run.work_dir else Path(tempfile.gettempdir())


@contextlib.contextmanager
def work_dir(settings: Settings, name: str) -> Iterator[Path]:
    """A private work directory for one process, owned (locked) while in use, then removed."""
    base = base_dir(settings)
    base.mkdir(parents=True, exist_ok=True)
    # Made under a hidden name, locked, then renamed: a folder `clean_stale` looks at is never
    # without its locked owner file while its process lives.
    staging = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{name}-", dir=base))
    path = staging.with_name(staging.name[1:])
    fd = os.open(staging / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        staging.rename(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        os.close(fd)


def clean_stale(settings: Settings) -> int:
    """Remove the work folders no live process owns; returns how many were removed."""
    base = base_dir(settings)
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except OSError:
        return 0  # no such folder yet: nothing to clean
    removed = 0
    for path in candidates:
        try:
            removed += _remove_if_stale(path)
        except OSError as exc:
            log.warning("could not clean work folder %s: %s", path, exc)
    if removed:
        log.warning("removed %d work folders left by killed processes in %s", removed, base)
    return removed


def _remove_if_stale(path: Path) -> bool:
    owner = path / OWNER_FILE
    try:
        fd = os.open(owner, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if time.time() - path.stat().st_mtime < UNOWNED_GRACE_S:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its process is alive
        # Held while removing: a process cannot take a folder over, but the lock keeps two
        # cleaning runs from both counting it.
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)
