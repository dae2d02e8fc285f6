"""The shell commands the pages show for restoring a repository from its downloads.

Each one works pasted into a POSIX shell (bash, zsh, dash) in an empty folder, in order
(tests/test_serve_page.py and tests/test_serve_states.py run them): git cannot clone a
bundle over HTTP (it asks for `info/refs`), so each file is downloaded first and git reads
it locally. A state with more than EXPLICIT_MAX increments gets one loop instead of a line
per increment, so a page stays the same size whatever the history.
"""

from __future__ import annotations

from shlex import quote
from typing import Any

from bulkbackup.archive import layout

# The refspec every increment is fetched with: all refs, forced (a force push is an increment).
ALL_REFS = "+refs/*:refs/*"
# Up to this many increments, one command each; beyond, one loop over them.
EXPLICIT_MAX = 2


def restore_commands(base_url: str, login: str, repo: dict[str, Any]) -> list[str]:
    """For a repository of `show --json` with a bundle: its newest state (the current
    chain's bundle and every committed increment). ``base_url`` is the server's public
    address (no trailing slash)."""
    name = str(repo["name"])
    chain = str(repo.get("chain") or "")
    increments = int(repo.get("increments") or 0) if layout.chain_time(chain) else 0
    return state_commands(base_url, login, name, layout.bundle_key(login, name), chain,
                          increments)


def state_commands(base_url: str, login: str, name: str, base_key: str, chain: str,
                   increments: int) -> list[str]:
    """Download the base ``base_key`` and clone a bare mirror `<name>.git` of it, fetch
    increments 1..``increments`` of ``chain`` into it in order, then check out a working
    copy `<name>`."""
    mirror = f"{name}.git"
    base_file = layout.file_name(base_key)
    cmds = [f"curl -fLo {quote(base_file)} {quote(f'{base_url}/users/{base_key}')} && "
            f"git clone --mirror -- {quote(base_file)} {quote(mirror)}"]
    if increments > EXPLICIT_MAX:
        cmds.append(_loop(base_url, login, name, chain, increments))
    else:
        for seq in range(1, increments + 1):
            key = layout.part_key(login, name, chain, seq)
            part = layout.file_name(key)  # the name the download is given
            cmds.append(f"curl -fLo {quote(part)} {quote(f'{base_url}/users/{key}')} && "
                        f"git -C {quote(mirror)} fetch --prune {quote('../' + part)} "
                        f"{quote(ALL_REFS)}")
    cmds.append(f"git clone -- {quote(mirror)} {quote(name)}")
    return cmds


def _loop(base_url: str, login: str, name: str, chain: str, increments: int) -> str:
    """One command fetching increments 1..``increments`` in order; it stops at the first
    that fails, with a failing status (a subshell: `exit` does not close the terminal)."""
    key = layout.part_key(login, name, chain, 1)
    url_head = f"{base_url}/users/{key.rsplit('/', 1)[0]}/"
    file_head = layout.file_name(key).removesuffix(f"{1:0{layout.SEQ_DIGITS}d}.bundle")
    suffix = layout.BUNDLE_SUFFIX
    file_ref = f'{quote(file_head)}"$p"{quote(suffix)}'
    return (f"( for i in $(seq 1 {increments}); do p=$(printf %0{layout.SEQ_DIGITS}d \"$i\"); "
            f"curl -fLo {file_ref} {quote(url_head)}\"$p\"{quote(suffix)} && "
            f"git -C {quote(name + '.git')} fetch --prune {quote('../' + file_head)}\"$p\""
            f"{quote(suffix)} {quote(ALL_REFS)} || exit 1; done )")


def at_command(login: str, name: str, at: str) -> str:
    """`bulkbackup restore` of the state archived at ``at`` (with the server's settings:
    the store it reads), into ./<login>/<name>.git."""
    return f"bulkbackup restore {quote(f'{login}/{name}')} --at {quote(at)}"
