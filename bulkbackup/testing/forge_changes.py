"""Changes to the stand-in's built repositories, for tests of increments: a force push, a new
branch or tag, a deleted ref, every ref deleted, a renamed repository. Each moves the listing's
pushed_at/updated_at as a real push would. A mixin of `Forge` (forge.py), kept apart so that
module stays about serving and counting.

With `event_log` set (a GH Archive stand-in, gharchive.py), a change is also recorded as the
event GitHub would publish (PushEvent, CreateEvent, DeleteEvent), in the hour it is made; a
rename publishes none (GitHub's events miss renames). Forge.push records its PushEvent too;
`add_repo` is Forge.add_user with its event (a CreateEvent of the repository).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulkbackup.testing.hostile_packs import PackAnswer
from bulkbackup.testing.releases import Releases, ReleaseSpec
from bulkbackup.testing.repos import NAME, PLACEHOLDER, RepoSpec, commit, epoch, git, rfc3339

if TYPE_CHECKING:
    from bulkbackup.testing.gharchive import GHArchive


class ForgeChanges:
    """Mutations of a built repository; needs Forge's state (declared here for the types)."""

    lock: threading.Lock
    users: dict[str, list[dict[str, Any]]]
    git_root: Path
    _stalled: set[tuple[str, str]]
    _stalled_mid: set[tuple[str, str]]
    _pack_answers: dict[tuple[str, str], PackAnswer]
    releases: Releases
    # Set: every change below is recorded there as its event (see the module's docstring).
    event_log: GHArchive | None = None

    def add_release(self, login: str, name: str, release: ReleaseSpec) -> None:
        """A published release (testing/releases.py), recorded as a ReleaseEvent; like
        GitHub's, it moves neither pushed_at nor updated_at of the listing."""
        with self.lock:
            self.releases.add(login, name, release)
        self._event("ReleaseEvent", login, name, action="published")

    def add_user(self, login: str, repos: Iterable[RepoSpec]) -> None:
        raise NotImplementedError  # Forge.add_user

    def _event(self, kind: str, login: str, name: str, **payload: Any) -> None:
        if self.event_log is not None:
            self.event_log.record(kind, f"{login}/{name}", payload)

    def _ref_event(self, kind: str, login: str, name: str, ref: str) -> None:
        """CreateEvent/DeleteEvent of a branch or tag, named as GitHub names it (`dev`)."""
        ref_type = "tag" if ref.startswith("refs/tags/") else "branch"
        short = ref.removeprefix("refs/tags/").removeprefix("refs/heads/")
        self._event(kind, login, name, ref=short, ref_type=ref_type, pusher_type="user")

    def add_repo(self, login: str, spec: RepoSpec) -> None:
        """Forge.add_user with one new repository, recorded as a CreateEvent (repository)."""
        self.add_user(login, [spec])
        self._event("CreateEvent", login, spec.name, ref=None, ref_type="repository",
                    pusher_type="user")

    def _repo_of(self, login: str, name: str) -> tuple[dict[str, Any], Path]:
        with self.lock:
            entry = next(e for e in self.users[login] if e.get("name") == name)
        repo = self.git_root / login / f"{name}.git"
        if not repo.is_dir():
            raise FileNotFoundError(repo)
        return entry, repo

    def _moved(self, entry: dict[str, Any]) -> None:
        """pushed_at/updated_at strictly later, as `push` does."""
        with self.lock:
            later = max(time.time(), epoch(entry["pushed_at"]) + 1,
                        epoch(entry["updated_at"]) + 1)
            entry["pushed_at"] = entry["updated_at"] = rfc3339(later)

    def set_stall(self, login: str, name: str, stall: bool) -> None:
        """From now on, POST git-upload-pack to the repository sleeps `stall_s` before
        answering (as RepoSpec.stall), or no longer does."""
        with self.lock:
            if stall:
                self._stalled.add((login, name))
            else:
                self._stalled.discard((login, name))

    def set_pack_answer(self, login: str, name: str, answer: PackAnswer | None) -> None:
        """From now on, a fetch of the repository that has ids to send (not a shallow one: a
        zip's) gets git's reply with the pack ``answer`` makes instead of git's own
        (hostile_packs.py); None: git's own again."""
        with self.lock:
            if answer is None:
                self._pack_answers.pop((login, name), None)
            else:
                self._pack_answers[(login, name)] = answer

    def point_ref(self, login: str, name: str, ref: str, oid: str) -> None:
        """``ref`` set to ``oid`` as a loose ref file, past git's checks (a branch at a blob,
        which `update-ref` refuses)."""
        entry, repo = self._repo_of(login, name)
        path = repo / ref
        if not ref.startswith("refs/") or ".." in ref:
            raise ValueError(f"unsafe ref {ref}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{oid}\n")
        self._moved(entry)
        self._event("PushEvent", login, name, ref=ref, head=oid, size=0)

    def tag_tree(self, login: str, name: str, tag: str, files: dict[str, bytes]) -> str:
        """A lightweight tag ``refs/tags/<tag>`` at a new tree holding ``files`` (flat
        names); its id."""
        entry, repo = self._repo_of(login, name)
        lines = []
        for fname, data in sorted(files.items()):
            blob = git("hash-object", "-w", "--stdin", cwd=repo, data=data).strip()
            lines.append(f"100644 blob {blob}\t{fname}\n")
        tree = git("mktree", cwd=repo, data="".join(lines).encode()).strip()
        git("update-ref", f"refs/tags/{tag}", tree, cwd=repo)
        self._moved(entry)
        self._ref_event("CreateEvent", login, name, f"refs/tags/{tag}")
        return tree

    def force_push(self, login: str, name: str, files: dict[str, bytes]) -> None:
        """The default branch replaced by a new root commit (unrelated history)."""
        entry, repo = self._repo_of(login, name)
        ref = f"refs/heads/{entry['default_branch']}"
        stream = f"reset {ref}\n\n".encode() + commit(ref, int(time.time()), files, None,
                                                       "force push")
        git("fast-import", "--quiet", "--force", cwd=repo, data=stream)
        self._moved(entry)
        self._event("PushEvent", login, name, ref=ref, size=1, forced=True)

    def add_branch(self, login: str, name: str, branch: str, files: dict[str, bytes]) -> None:
        """A new commit with ``files`` on top of the default branch, as branch ``branch``."""
        entry, repo = self._repo_of(login, name)
        parent = f"refs/heads/{entry['default_branch']}^0"
        git("fast-import", "--quiet", cwd=repo,
            data=commit(f"refs/heads/{branch}", int(time.time()), files, parent, branch))
        self._moved(entry)
        self._ref_event("CreateEvent", login, name, f"refs/heads/{branch}")

    def add_tag(self, login: str, name: str, tag: str, annotated: bool = True) -> None:
        """Tag ``refs/tags/<tag>`` on the default branch's tip (an annotated tag object, or a
        lightweight tag)."""
        entry, repo = self._repo_of(login, name)
        tip = f"refs/heads/{entry['default_branch']}^0"
        if annotated:
            msg = f"release {tag}\n".encode()
            stream = b"tag %s\nfrom %s\ntagger A U Thor <author@example.com> %d +0000\n" \
                     b"data %d\n%s\n" % (tag.encode(), tip.encode(), int(time.time()), len(msg),
                                          msg)
        else:
            stream = f"reset refs/tags/{tag}\nfrom {tip}\n\n".encode()
        git("fast-import", "--quiet", "--force", cwd=repo, data=stream)
        self._moved(entry)
        self._ref_event("CreateEvent", login, name, f"refs/tags/{tag}")

    def delete_ref(self, login: str, name: str, ref: str) -> None:
        """Delete one ref (``refs/heads/dev``, ``refs/tags/v1``, ...)."""
        entry, repo = self._repo_of(login, name)
        git("update-ref", "-d", ref, cwd=repo)
        self._moved(entry)
        self._ref_event("DeleteEvent", login, name, ref)

    def empty_repo(self, login: str, name: str) -> None:
        """Every ref deleted: the repository serves no refs (its objects stay)."""
        entry, repo = self._repo_of(login, name)
        refs = git("for-each-ref", "--format=%(refname)", cwd=repo).split()
        git("update-ref", "--stdin", cwd=repo, data="".join(f"delete {r}\n" for r in refs).encode())
        self._moved(entry)
        for ref in refs:
            self._ref_event("DeleteEvent", login, name, ref)

    def rename_repo(self, login: str, old: str, new: str) -> None:
        """The repository is now ``new``: its listing entry (name, URLs) and its git folder;
        the old name answers 404."""
        if not NAME.fullmatch(new) or ".." in new:
            raise ValueError(f"unsafe name {login}/{new}")
        entry, repo = self._repo_of(login, old)
        repo.rename(self.git_root / login / f"{new}.git")
        base, full = f"http://{PLACEHOLDER}", f"{login}/{new}"
        with self.lock:
            entry.update(name=new, full_name=full, html_url=f"{base}/{full}",
                         url=f"{base}/repos/{full}", clone_url=f"{base}/{full}.git",
                         git_url=f"git://{PLACEHOLDER}/{full}.git",
                         ssh_url=f"git@localhost:{full}.git")
            for stalled in (self._stalled, self._stalled_mid):
                if (login, old) in stalled:
                    stalled.discard((login, old))
                    stalled.add((login, new))
        self._moved(entry)
