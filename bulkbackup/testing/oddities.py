"""Objects that `git fsck` flags but git reads and fetches (as found in real public history:
a 2011 commit with time zone `+051800`...), written with `git hash-object --literally`.

``add_oddities(repo)`` adds one branch `odd/<msg-id>` per fsck message id, each a commit
on top of ``repo``'s HEAD carrying that one oddity (in the commit or in its tree).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bulkbackup.testing.repos import git

_WHO = b"A U Thor <author@example.com>"
_WHEN = b"1300000000 +0000"


class _Writer:
    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.parent = git("rev-parse", "HEAD^{commit}", cwd=repo).strip()
        self.blob = self.write("blob", b"an odd object\n")
        self.tree = self.entries((b"100644", b"odd.txt", self.blob))

    def write(self, kind: str, data: bytes) -> str:
        return git("hash-object", "-w", "--literally", "-t", kind, "--stdin", cwd=self.repo,
                   data=data).strip()

    def entries(self, *items: tuple[bytes, bytes, str]) -> str:
        return self.write("tree", b"".join(mode + b" " + name + b"\0" + bytes.fromhex(oid)
                                           for mode, name, oid in items))

    def commit(self, tree: str | None = None, author: bytes = _WHO + b" " + _WHEN,
               headers: bytes | None = None, message: bytes = b"odd\n") -> str:
        if headers is None:
            headers = b"author %s\ncommitter %s %s\n" % (author, _WHO, _WHEN)
        return self.write("commit", b"tree %s\nparent %s\n%s\n%s" % (
            (tree or self.tree).encode(), self.parent.encode(), headers, message))

    def modules(self, text: bytes) -> str:
        return self.commit(self.entries((b"100644", b".gitmodules", self.write("blob", text))))


def _cases(w: _Writer) -> dict[str, Callable[[], str]]:
    who, when, b, t = _WHO, _WHEN, w.blob, w.tree
    return {
        "badTimezone": lambda: w.commit(author=who + b" 1300000000 +051800"),
        "missingSpaceBeforeDate": lambda: w.commit(author=who + b"1300000000 +0000"),
        "badDate": lambda: w.commit(author=who + b" x1300000000 +0000"),
        "zeroPaddedDate": lambda: w.commit(author=who + b" 01300000000 +0000"),
        "badDateOverflow": lambda: w.commit(author=who + b" 99999999999999999999999 +0000"),
        "missingEmail": lambda: w.commit(author=b"A U Thor " + when),
        "badEmail": lambda: w.commit(author=b"A U Thor <a@ex<ample.com> " + when),
        "missingSpaceBeforeEmail": lambda: w.commit(author=b"A U Thor<a@example.com> " + when),
        "missingNameBeforeEmail": lambda: w.commit(author=b"<a@example.com> " + when),
        "badName": lambda: w.commit(author=b"A U >Thor <a@example.com> " + when),
        "missingAuthor": lambda: w.commit(headers=b"committer %s %s\n" % (who, when)),
        "missingCommitter": lambda: w.commit(headers=b"author %s %s\n" % (who, when)),
        "nulInCommit": lambda: w.commit(message=b"odd\0message\n"),
        "zeroPaddedFilemode": lambda: w.commit(w.entries((b"0100644", b"odd.txt", b))),
        "badFilemode": lambda: w.commit(w.entries((b"100600", b"odd.txt", b))),
        "duplicateEntries": lambda: w.commit(w.entries((b"100644", b"a", b),
                                                       (b"100644", b"a", b))),
        "treeNotSorted": lambda: w.commit(w.entries((b"100644", b"b", b), (b"100644", b"a", b))),
        "fullPathname": lambda: w.commit(w.entries((b"100644", b"a/b", b))),
        "hasDot": lambda: w.commit(w.entries((b"40000", b".", t))),
        "hasDotdot": lambda: w.commit(w.entries((b"40000", b"..", t))),
        "hasDotgit": lambda: w.commit(w.entries((b"40000", b".git", t))),
        "gitmodulesBlob": lambda: w.commit(w.entries((b"40000", b".gitmodules", t))),
        "gitmodulesSymlink": lambda: w.commit(w.entries((b"120000", b".gitmodules", b))),
        "gitmodulesUrl": lambda: w.modules(b'[submodule "x"]\n\tpath = x\n\turl = -u=evil\n'),
        "gitmodulesPath": lambda: w.modules(b'[submodule "x"]\n\tpath = -x\n\turl = https://a/b\n'),
        "gitmodulesName": lambda: w.modules(b'[submodule "../x"]\n\tpath = x\n\turl = https://a/b\n'),
        "gitmodulesParse": lambda: w.modules(b'[submodule "x\n\tpath\n'),
    }


def add_oddities(repo: Path) -> dict[str, str]:
    """One branch `odd/<msg-id>` per case; returns msg-id -> commit id."""
    writer = _Writer(repo)
    made = {}
    for msg_id, make in _cases(writer).items():
        made[msg_id] = make()
        git("update-ref", f"refs/heads/odd/{msg_id}", made[msg_id], cwd=repo)
    return made


def add_bad_tree(repo: Path) -> str:
    """A branch `broken` at a commit whose tree git cannot parse (an entry without a name:
    fsck's badTree): corruption, not an oddity (a fetch of it fails)."""
    writer = _Writer(repo)
    oid = writer.commit(writer.entries((b"100644", b"", writer.blob)))
    git("update-ref", "refs/heads/broken", oid, cwd=repo)
    return oid
