"""`git fsck` of a restored archive: corruption fails, format oddities are noted.

Real history holds objects that today's `git fsck` flags but that GitHub accepted long ago (a
2011 commit with time zone `+051800`, a tree with zero-padded modes...). git reads them, and a
fetch (fsck off, git's default and ours) lets them through, so a faithful archive holds them
too. Such a message fails nothing: it is noted. Corruption fails: an object missing,
unreadable or with the wrong hash, a broken link, a ref at a missing object, an object git
cannot parse (its links cannot be followed), or any message this module does not know.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bulkbackup.errors import ArchiveError
from bulkbackup.git.localgit import Git

# fsck message ids (git's fsck.h, camelCase as fsck prints them) for objects git parses and
# whose links it follows: a fetch with git's default config takes them (checked for each one
# in tests/test_fsck.py). Not here, so corruption: badTree, badTreeSha1, missingTree,
# badParentSha1, badObjectSha1, missingObject, missingType(Entry), badType, unknownType,
# nulInHeader, unterminatedHeader, gitmodulesMissing/gitattributesMissing (a blob not
# readable), and any id a newer git adds until it is looked at.
TOLERATED = frozenset({
    # author/committer/tagger lines
    "badDate", "badDateOverflow", "badEmail", "badName", "badTimezone", "missingAuthor",
    "missingCommitter", "missingEmail", "missingNameBeforeEmail", "missingSpaceBeforeDate",
    "missingSpaceBeforeEmail", "multipleAuthors", "zeroPaddedDate", "nulInCommit",
    "extraHeaderEntry", "missingTaggerEntry", "badTagName",
    # tree entries
    "badFilemode", "duplicateEntries", "fullPathname", "hasDot", "hasDotdot", "hasDotgit",
    "largePathname", "nullSha1", "treeNotSorted", "zeroPaddedFilemode",
    # .gitmodules / .gitattributes contents (checks for checkouts, not for the archive)
    "gitmodulesBlob", "gitmodulesLarge", "gitmodulesName", "gitmodulesParse",
    "gitmodulesPath", "gitmodulesSymlink", "gitmodulesUpdate", "gitmodulesUrl",
    "gitattributesBlob", "gitattributesLarge", "gitattributesLineLength",
    "gitattributesSymlink",
})
# `error in commit <id>: badTimezone: invalid author/committer line - bad time zone`
_MESSAGE = re.compile(r"(error|warning) in (commit|tree|blob|tag) ([0-9a-f]{40,64}): "
                      r"([A-Za-z0-9]{1,64}): ")
NOTES_MAX_CHARS = 300  # VerifyNotes: a few ids with a count and one object each


@dataclass
class FsckNotes:
    """Tolerated messages: how many objects per id, and the first object named."""

    counts: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, msg_id: str, kind: str, oid: str) -> None:
        self.counts[msg_id] += 1
        self.first.setdefault(msg_id, f"{kind} {oid[:12]}")

    def text(self) -> str:
        """`badTimezone 1 (commit 275a22d22a86); zeroPaddedFilemode 3 (tree 2ab04b24f0d3)`,
        ASCII (ids and hex only), at most NOTES_MAX_CHARS."""
        items = [f"{i} {self.counts[i]} ({self.first[i]})" for i in sorted(self.counts)]
        kept: list[str] = []
        for n, item in enumerate(items):
            if len("; ".join([*kept, item])) > NOTES_MAX_CHARS - len("; +999 more"):
                return "; ".join([*kept, f"+{len(items) - n} more"])
            kept.append(item)
        return "; ".join(kept)

def fsck(git: Git, repo: Path) -> FsckNotes:
    """Run `git fsck --full` on ``repo``; raise ArchiveError naming the first sign of
    corruption, else return the tolerated messages."""
    status, out, err = git.run("fsck", "--full", "--no-progress", "--no-dangling", cwd=repo)
    return classify(status, out + err)


def classify(status: int, output: str) -> FsckNotes:
    notes = FsckNotes()
    bad: list[str] = []
    for raw in output.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("notice:"):
            continue
        if line.startswith("to ") and bad:  # `broken link from commit X` / `to tree Y`
            bad[-1] += " " + line
            continue
        match = _MESSAGE.match(line)
        if match and (match[1] == "warning" or match[4] in TOLERATED):
            notes.add(match[4], match[2], match[3])
        elif match or status != 0:  # an unknown message; other lines count only on failure
            bad.append(line)
    # fsck's exit bits: 1 objects, 2 reachability, 4 packs, 8 refs, 16/32 graph/midx. Only
    # 1 and 4 come from object messages alone (an object in a pack fails its pack's check
    # too); any other damage to a pack prints its own error line, counted above.
    if bad or status & ~5:
        why = bad[0] if bad else f"exit status {status}"
        raise ArchiveError(f"git fsck failed: {why[:300]}")
    return notes
