"""`jobs/`: the manifests parse, run commands the CLI really has, and hold no secrets."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from bulkbackup import config
from bulkbackup.cli import build_parser
from tests.conftest import ROOT

JOBS = ROOT / "jobs"
K8S = sorted((JOBS / "kubernetes").glob("*.yaml"))
UNITS = sorted((JOBS / "systemd").glob("bulkbackup*"))
SECRET_NAMES = {"GITHUB_TOKEN", "GITHUB_TOKENS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRET_LOOKING = re.compile(r"ghp_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16}")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in K8S for d in yaml.safe_load_all(p.read_text()) if d]


def walk(node: object) -> list[dict[str, Any]]:
    """Every mapping inside ``node``."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for v in node.values():
            found += walk(v)
    elif isinstance(node, list):
        for v in node:
            found += walk(v)
    return found


def containers() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, m) for p, d in documents() for m in walk(d)
            if "image" in m and m.get("image") == "bulkbackup"]


def command_lines() -> list[list[str]]:
    """Every bulkbackup command line: container args, ExecStart lines, the Dockerfile's CMD."""
    lines = [list(c["args"]) for _, c in containers()]
    for unit in UNITS:
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.removeprefix("ExecStart="))
                assert argv[0].endswith("/bulkbackup")
                lines.append(argv[1:])
    cmd = re.search(r"^CMD (\[.*\])$", (JOBS / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    lines.append(yaml.safe_load(cmd.group(1)))
    return lines


def documented_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"`((?:BULKBACKUP|GITHUB|REDIS|AWS)_[A-Z0-9_]+)`", text))


def test_every_manifest_parses_and_has_a_kind() -> None:
    assert K8S and UNITS
    for path, doc in documents():
        assert "kind" in doc and "apiVersion" in doc, path
    listed = yaml.safe_load((JOBS / "kubernetes" / "kustomization.yaml").read_text())
    for resource in listed["resources"]:
        assert (JOBS / "kubernetes" / resource).exists()
    assert "secret.example.yaml" not in listed["resources"]


@pytest.mark.parametrize("argv", command_lines(), ids=" ".join)
def test_commands_exist_in_the_cli(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse refuses unknown commands and flags this way
        if argv != ["--help"]:
            raise AssertionError(f"bulkbackup {' '.join(argv)}: refused by the CLI") from exc


def test_variables_are_the_documented_ones() -> None:
    documented = documented_variables()
    assert {"REDIS_URL", "BULKBACKUP_STORE", "GITHUB_TOKENS", "BULKBACKUP_WORKER_HOST"} <= \
        documented
    used: set[str] = set()
    for _, c in containers():
        used |= {e["name"] for e in c.get("env", [])}
    for unit in [*UNITS, JOBS / "systemd" / "env.example"]:
        used |= set(re.findall(r"\b((?:BULKBACKUP|GITHUB|REDIS|AWS)_[A-Z0-9_]+)=",
                               unit.read_text()))
    ours = {v for v in used if re.match(r"(BULKBACKUP|GITHUB|REDIS|AWS)_", v)}
    assert ours <= documented, ours - documented


def test_no_literal_secrets() -> None:
    for _, c in containers():
        for e in c.get("env", []):
            if e["name"] in SECRET_NAMES:
                assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), e
    for path in JOBS.rglob("*"):
        if path.is_file():
            assert not SECRET_LOOKING.search(path.read_text(errors="replace")), path
    example = yaml.safe_load((JOBS / "kubernetes" / "secret.example.yaml").read_text())
    assert all(v.startswith("<") for v in example["stringData"].values())


def test_configmap_config_loads_and_grace_fits(tmp_path: Path) -> None:
    cm = next(d for _, d in documents() if d["kind"] == "ConfigMap")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(cm["data"]["config.yaml"])
    settings = config.load(cfg, environ={"BULKBACKUP_WORKER_HOST": "pod-0"})
    grace = settings.run.grace_s
    workers = next(d for _, d in documents()
                   if d.get("metadata", {}).get("name") == "bulkbackup-workers")
    pod = workers["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace
    work = next(v for v in pod["volumes"] if v["name"] == "work")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "work")
    assert "emptyDir" in work and mount["mountPath"] == settings.run.work_dir
    host = next(e for e in pod["containers"][0]["env"] if e["name"] == "BULKBACKUP_WORKER_HOST")
    assert host["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    unit = (JOBS / "systemd" / "bulkbackup-worker@.service").read_text()
    timeout = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert timeout is not None and int(timeout.group(1)) > grace
    assert re.search(r"^KillMode=mixed$", unit, re.M)


def test_dockerfile_installs_the_project_and_git() -> None:
    text = (JOBS / "Dockerfile").read_text()
    assert re.search(r"apt-get install[^\n]*\bgit\b", text)
    assert "COPY pyproject.toml" in text and re.search(r"pip install[^\n]* \.(\s|$)", text)
    # Dependencies come from pyproject.toml alone: no package is named a second time.
    assert not re.search(r"pip install[^\n]*(redis|boto3|orjson|tqdm|GitPython|PyYAML)", text)
