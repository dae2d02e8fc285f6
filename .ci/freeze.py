"""Write constraints.txt: the exact versions installed here of every package bulkbackup needs,
with all its extras (serve, standin, test), transitive dependencies included.

Run it after the tests pass on newer versions (`.ci/newest`), from the environment they passed
in: `python3 .ci/freeze.py > constraints.txt`. It reads the requirements from pyproject.toml
(not from an installed bulkbackup) and follows each package's own requirements, with their
extras and environment markers, through what is installed; a required package that is not
installed is an error (install first: `pip install -e '.[test]'`).
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# Packaging tools are not pinned: a constraint on setuptools (moto[server] needs some version)
# would also bind the build of bulkbackup itself where pip applies constraints to it, and
# pyproject's build-system asks for its own.
UNPINNED = {"pip", "setuptools", "wheel"}


def top_level() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [Requirement(t) for t in texts]


def wanted(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in extras or {""})


def closure() -> dict[str, str]:
    """Canonical name -> installed version, for every package reachable from pyproject."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, frozenset({""})) for r in top_level()]
    while todo:
        req, parent_extras = todo.pop()
        if not wanted(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"freeze: {req.name} is required but not installed")
        if name not in UNPINNED:
            pinned[name] = dist.version
        extras = frozenset(req.extras) | {""}
        todo += [(Requirement(t), extras) for t in dist.requires or []]
    return pinned


def main() -> None:
    print("# Exact versions bulkbackup was tested with (.ci/run and the README install with")
    print("# `pip install -c constraints.txt ...`). Written by `python3 .ci/freeze.py`; floors")
    print("# stay in pyproject.toml. `.ci/newest` tries the newest versions instead.")
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
