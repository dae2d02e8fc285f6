"""The shell commands the user page shows for restoring a repository from its downloads.

Each one works pasted into a POSIX shell in an empty folder, in order (tests/test_serve.py
runs them): git cannot clone a bundle over HTTP (it asks for `info/refs`), so each file is
downloaded first and git reads it locally.
"""

from __future__ import annotations

from shlex import quote
from typing import Any

from bulkbackup.archive import layout

# The refspec every increment is fetched with: all refs, forced (a force push is an increment).
ALL_REFS = "+refs/*:refs/*"


def restore_commands(base_url: str, login: str, repo: dict[str, Any]) -> list[str]:
    """For a repository of `show --json` with a bundle: download the bundle and clone a bare
    mirror of it, fetch each increment into the mirror in order, then check out a working
    copy. ``base_url`` is the server's public address (no trailing slash)."""
    name = str(repo["name"])
    mirror = f"{name}.git"
    url = f"{base_url}/users/{layout.bundle_key(login, name)}"
    cmds = [f"curl -fLo {quote(name + '.bundle')} {quote(url)} && "
            f"git clone --mirror -- {quote(name + '.bundle')} {quote(mirror)}"]
    chain = str(repo.get("chain") or "")
    increments = int(repo.get("increments") or 0) if layout.chain_time(chain) else 0
    for seq in range(1, increments + 1):
        key = layout.part_key(login, name, chain, seq)
        part = layout.file_name(key)  # the name the download is given
        part_url = f"{base_url}/users/{key}"
        cmds.append(f"curl -fLo {quote(part)} {quote(part_url)} && "
                    f"git -C {quote(mirror)} fetch --prune {quote('../' + part)} "
                    f"{quote(ALL_REFS)}")
    cmds.append(f"git clone -- {quote(mirror)} {quote(name)}")
    return cmds
