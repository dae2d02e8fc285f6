"""A fresh install is reproducible: constraints.txt pins what the tests passed with, within
pyproject.toml's floors, and the documented install commands use it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and not re.search(r"[<>!~;,\s]", version), line
            out[canonicalize_name(name)] = version
    return out


def test_constraints_pin_every_requirement_within_pyprojects_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    pinned = pins()
    for req in map(Requirement, texts):
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(version, prereleases=True), (req, version)
    # What the GitHub stand-in was tested with (graphql-core 3.3 works too: .ci/newest).
    assert pinned["graphql-core"].startswith("3.2.")
    # Transitive dependencies too (boto3's botocore, GitPython's gitdb), not packaging tools.
    assert {"botocore", "gitdb", "starlette", "anyio"} <= pinned.keys()
    assert not {"pip", "setuptools", "wheel"} & pinned.keys()


def test_the_documented_installs_use_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt -e '.[test]' && python -m pytest" in readme
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt" in (ROOT / "jobs" / "demo.sh").read_text()
    # The weekly job installs the newest versions instead, transitive ones too.
    newest = (ROOT / ".ci" / "newest").read_text()
    assert "-c constraints.txt" not in newest and "--upgrade-strategy eager" in newest


def test_the_tests_run_on_the_pinned_versions_and_freeze_writes_them() -> None:
    """The environment the tests run in (the README's and .ci/run's install) is exactly
    constraints.txt, and `.ci/freeze.py` (what README says records the versions after
    `.ci/newest`) writes that file from it. .ci/newest, on other versions, deselects this."""
    frozen = subprocess.run([sys.executable, str(ROOT / ".ci" / "freeze.py")], check=True,
                            capture_output=True, text=True, timeout=60).stdout
    assert frozen == (ROOT / "constraints.txt").read_text()
    newest = (ROOT / ".ci" / "newest").read_text()
    assert "--deselect tests/test_install.py::" + \
        "test_the_tests_run_on_the_pinned_versions_and_freeze_writes_them" in newest


def test_a_built_package_holds_every_file_of_the_source_and_runs(
        tmp_path: Path, redis_url: str) -> None:
    """A non-editable install (README: `pip install -c constraints.txt .`) gets what
    setuptools builds into the wheel (build_py: the packages and their package-data), not the
    source tree the tests import: every file of bulkbackup/ under git must be in it (the Lua
    scripts, templates, static files, the stand-in's schema), and the built package runs
    from outside the checkout (`track`: a Lua script loaded from it)."""
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--", "pyproject.toml", "bulkbackup"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    tracked = sorted(f.decode() for f in files if f)
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    built = tmp_path / "built"
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                    "build_py", "-d", str(built)], cwd=source, check=True,
                   capture_output=True, timeout=120)
    got = sorted(str(p.relative_to(built)) for p in built.rglob("*") if p.is_file())
    assert got == [n for n in tracked if n.startswith("bulkbackup/")]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(built), "REDIS_URL": redis_url,
           "BULKBACKUP_CONFIG": os.devnull, "BULKBACKUP_STORE": str(tmp_path / "store")}
    where = subprocess.run([sys.executable, "-c", "import bulkbackup; print(bulkbackup.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(built / "bulkbackup")), where.stdout + where.stderr
    proc = subprocess.run([sys.executable, "-m", "bulkbackup", "track", "built-one"],
                          cwd=outside, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "built-one: added" in proc.stdout, proc.stderr
