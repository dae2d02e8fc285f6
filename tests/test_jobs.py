"""`jobs/`: what runs the jobs for real is checked against the project itself.

Manifests, units and the Dockerfile parse; every bulkbackup command line in them is accepted by
the real argument parser; they set only variables the project reads or documents; they hold no
secret; and the settings they ship load and agree with the pods' and units' timeouts and disks.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bulkbackup import config
from bulkbackup.cli import build_parser
from tests.helpers import ROOT

JOBS = ROOT / "jobs"
K8S = JOBS / "kubernetes"
SYSTEMD = JOBS / "systemd"
DOCKERFILE = JOBS / "Dockerfile"
DESIGN = ROOT / "docs" / "design.md"

OUR_VAR = re.compile(r"(?:BULKBACKUP|GITHUB|REDIS|AWS)_[A-Z0-9_]+")
SECRET_VARS = {"GITHUB_TOKEN", "GITHUB_TOKENS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# GitHub tokens (classic, OAuth, user-to-server, server-to-server, refresh, fine-grained) and
# AWS access key ids (long-term and temporary).
SECRET_LOOKING = re.compile(
    r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|(?:AKIA|ASIA)[0-9A-Z]{16}")
# user:password@ in a URL, unless the password is a <placeholder>.
URL_PASSWORD = re.compile(r"://[^/\s:@<>]*:(?!<)[^/\s@]+@")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


# ---------------------------------------------------------------------------------------------
# Reading the files


def yaml_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization() -> dict[str, Any]:
    doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def manifests(*, applied_only: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """Kubernetes objects: every file of jobs/kubernetes, or only those kustomize applies."""
    if applied_only:
        files = [K8S / name for name in kustomization()["resources"]]
    else:
        files = sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")
    return [(p, d) for p in files for d in yaml_documents(p)]


def walk(node: object) -> Iterator[dict[str, Any]]:
    """Every mapping inside ``node``, itself included."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in walk(doc) if isinstance(m.get("containers"), list)]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in pod_specs(doc)
            for c in [*pod.get("initContainers", []), *pod["containers"]]]


def is_bulkbackup_image(image: str) -> bool:
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0] == "bulkbackup"


def bulkbackup_containers() -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    return [(p, d, c) for p, d in manifests() for c in containers(d)
            if is_bulkbackup_image(str(c.get("image", "")))]


def by_name(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in manifests(applied_only=True)
             if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile(instruction: str) -> list[str]:
    return [rest for word, rest in dockerfile_instructions() if word == instruction]


def entrypoint() -> list[str]:
    (ep,) = dockerfile("ENTRYPOINT")
    argv = json.loads(ep)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """A systemd unit file as section -> key -> values (in order)."""
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def units() -> dict[str, Unit]:
    return {p.name: read_unit(p) for p in sorted(SYSTEMD.glob("bulkbackup*"))}


def unit_environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit["Service"].get("Environment", []):
        for assignment in shlex.split(value):
            name, _, val = assignment.partition("=")
            env[name] = val
    return env


def timespan_s(text: str) -> float:
    """A systemd time span ("45", "45s", "1min 30s") in seconds."""
    factors = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    for number, unit in parts:
        total += float(number) * factors[unit]
    return total


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not an assignment: {line!r}"
            out[name.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------
# Every bulkbackup command line


def after_bulkbackup(argv: list[str]) -> list[str] | None:
    """The arguments given to bulkbackup in ``argv`` (a wrapper such as tini may come first)."""
    for i, word in enumerate(argv):
        if PurePosixPath(word).name == "bulkbackup":
            return argv[i + 1:]
    return None


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, args) for every bulkbackup command of the manifests, units, Dockerfile, README."""
    lines: list[tuple[str, list[str]]] = []
    image_entrypoint = entrypoint()
    for path, doc, c in bulkbackup_containers():
        argv = [*c.get("command", image_entrypoint), *c.get("args", [])]
        args = after_bulkbackup([str(a) for a in argv])
        assert args is not None, f"{path.name}: {c['name']} does not run bulkbackup: {argv}"
        lines.append((f"{path.name}:{doc['metadata']['name']}/{c['name']}", args))
    for name, unit in units().items():
        for key, values in unit.get("Service", {}).items():
            if key.startswith("Exec"):
                for value in values:
                    argv = shlex.split(value.lstrip("-@+!:"))
                    args = after_bulkbackup(argv[:1])
                    if args is not None:  # argv[0] is bulkbackup itself
                        lines.append((f"{name}:{key}", argv[1:]))
        exec_start = unit.get("Service", {}).get("ExecStart", [])
        if name.endswith(".service"):
            assert exec_start and PurePosixPath(shlex.split(exec_start[0])[0]).name == \
                "bulkbackup", f"{name}: ExecStart does not run bulkbackup"
    (cmd,) = dockerfile("CMD")
    args = after_bulkbackup(entrypoint() + json.loads(cmd))
    assert args is not None, "the image's ENTRYPOINT does not run bulkbackup"
    lines.append(("Dockerfile:ENTRYPOINT+CMD", args))
    # Commands in the READMEs' code blocks, and the cron file's lines.
    for readme in (JOBS / "README.md", ROOT / "README.md"):
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme.read_text(), re.M | re.S)
        for block in blocks:
            lines += shell_commands(block, f"{readme.relative_to(ROOT)}")
    crontab = (JOBS / "cron" / "bulkbackup.cron").read_text()
    lines += shell_commands(crontab, "jobs/cron/bulkbackup.cron")
    return lines


def shell_commands(text: str, where: str) -> list[tuple[str, list[str]]]:
    """(where, args) of each bulkbackup command in shell text, up to a shell operator."""
    found: list[tuple[str, list[str]]] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if "bulkbackup " not in line or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line.replace(";", " ; "), comments=True)
        for i, word in enumerate(words):
            # The program (not a namespace, user or path argument): the first word, or the word
            # after a wrapper, a VAR=value, a `;` or flock's lock file.
            if PurePosixPath(word).name == "bulkbackup" and (i == 0 or (
                    word == "bulkbackup" and ("=" in words[i - 1] or words[i - 1].endswith(".lock")
                                              or words[i - 1] in ("--", "exec", "env", ";")))):
                rest = []
                for w in words[i + 1:]:
                    if w in ("|", "&&", "||", ";", ">", "2>", "&") or w.startswith(">"):
                        break
                    rest.append(w)
                found.append((f"{where}: {line.strip()}", rest))
    return found


COMMAND_LINES = command_lines()


def strict_parser() -> argparse.ArgumentParser:
    """The real parser, without abbreviations: a job spells every flag in full."""
    parser = build_parser()
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.allow_abbrev = False
    return parser


@pytest.mark.parametrize(("where", "args"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_every_command_line_is_accepted_by_the_cli(where: str, args: list[str]) -> None:
    if args in (["--help"], ["--version"]):  # argparse exits 0 for these, by design
        with pytest.raises(SystemExit) as exc:
            strict_parser().parse_args(args)
        assert exc.value.code == 0
        return
    try:
        strict_parser().parse_args(args)
    except SystemExit as exc:  # argparse refuses unknown commands, flags and values this way
        raise AssertionError(f"{where}: `bulkbackup {shlex.join(args)}` is refused") from exc


def test_the_jobs_run_the_commands_they_are_for() -> None:
    parsed = {where: build_parser().parse_args(args) for where, args in COMMAND_LINES
              if args not in (["--help"], ["--version"])}
    commands = {ns.command for ns in parsed.values()}
    assert {"ingest", "run", "stats"} <= commands
    for where, ns in parsed.items():
        if ns.command == "run" and "README" not in where:
            assert ns.no_stats, f"{where}: workers leave the stats pass to the CronJob/timer"
        if ns.command == "stats" and "README" not in where:
            assert ns.json and not ns.no_write, where


# ---------------------------------------------------------------------------------------------
# Files parse; kustomize sees everything but the example Secret


def test_every_yaml_file_parses() -> None:
    files = sorted([*JOBS.rglob("*.yaml"), *JOBS.rglob("*.yml")])
    assert len(files) >= 5
    for path in files:
        docs = yaml_documents(path)
        assert docs, f"{path} is empty"
    for path, doc in manifests():
        assert isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc, path
        assert doc.get("metadata", {}).get("name"), path


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    k = kustomization()
    assert k["namespace"] == "bulkbackup"
    listed = k["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), name
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk - {"secret.example.yaml"}
    assert "secret.example.yaml" not in listed
    assert not [d for _, d in manifests(applied_only=True) if d["kind"] == "Secret"]
    assert any(i["name"] == "bulkbackup" for i in k.get("images", []))
    for path, doc in manifests():
        ns = doc["metadata"].get("namespace")
        assert ns in (None, "bulkbackup"), f"{path.name}: namespace {ns}"


# ---------------------------------------------------------------------------------------------
# Variables


def variables_read_by_the_code() -> set[str]:
    """Names the package reads from the environment: env.get("X"), environ["X"], getenv("X")."""
    found: set[str] = set()
    for path in (ROOT / "bulkbackup").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            arg: ast.expr | None = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("get", "getenv") and node.args:
                arg = node.args[0]
            elif isinstance(node, ast.Subscript):
                arg = node.slice
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and \
                    OUR_VAR.fullmatch(arg.value):
                found.add(arg.value)
    return found


def variables_documented() -> set[str]:
    """The variable tables of docs/design.md and the README, and config.yaml."""
    names: set[str] = set()
    for doc in (DESIGN, ROOT / "README.md"):
        if doc.exists():
            for row in doc.read_text().splitlines():
                if row.startswith("| `"):
                    names |= set(OUR_VAR.findall(row.split("|")[1]))
    names |= set(OUR_VAR.findall((ROOT / "config.yaml").read_text()))
    return names


def variables_set_by_jobs() -> dict[str, set[str]]:
    """Variable name -> where the jobs set it."""
    used: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        used.setdefault(name, set()).add(where)

    configmaps = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "ConfigMap"}
    for path, _, c in bulkbackup_containers():
        for e in c.get("env", []):
            add(e["name"], path.name)
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                for key in configmaps[source["configMapRef"]["name"]].get("data", {}):
                    add(key, path.name)
    for path, doc in manifests():
        if doc["kind"] == "Secret":
            for key in {**doc.get("stringData", {}), **doc.get("data", {})}:
                add(key, path.name)
    for name, unit in units().items():
        for key in unit_environment(unit) if "Service" in unit else {}:
            add(key, name)
    for key in env_file(SYSTEMD / "env.example"):
        add(key, "env.example")
    for rest in dockerfile("ENV"):
        for key in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", rest):
            add(key, "Dockerfile")
    return used


def test_variables_are_the_ones_the_project_reads_or_documents() -> None:
    read = variables_read_by_the_code()
    documented = variables_documented()
    # The collection itself works (a broken regex must not make the check vacuous).
    assert {"REDIS_URL", "BULKBACKUP_STORE", "GITHUB_TOKENS", "BULKBACKUP_WORKER_HOST",
            "BULKBACKUP_CONFIG"} <= read
    assert {"AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION"} <= documented
    known = read | documented
    ours = {n: w for n, w in variables_set_by_jobs().items() if OUR_VAR.fullmatch(n)}
    assert {"BULKBACKUP_CONFIG", "BULKBACKUP_WORKER_HOST", "GITHUB_TOKENS"} <= set(ours)
    unknown = {n: sorted(w) for n, w in ours.items() if n not in known}
    assert not unknown, f"variables the project neither reads nor documents: {unknown}"


# ---------------------------------------------------------------------------------------------
# Secrets


def test_secrets_come_from_the_secret_only() -> None:
    example = by_name_any("Secret", "bulkbackup-secrets")
    secret_keys = set(example.get("stringData", {}))
    assert SECRET_VARS - {"GITHUB_TOKEN"} <= secret_keys
    configmaps = [d for _, d in manifests() if d["kind"] == "ConfigMap"]
    for cm in configmaps:
        assert not SECRET_VARS & set(cm.get("data", {})), cm["metadata"]["name"]
    for path, _, c in bulkbackup_containers():
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if e["name"] in SECRET_VARS:
                assert "value" not in e and ref is not None, f"{path.name}: {e['name']} literal"
            if ref is not None:
                assert ref["name"] == "bulkbackup-secrets" and ref["key"] in secret_keys, ref
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] == "bulkbackup-secrets"
    # The example holds placeholders only (a URL may keep its shape around them).
    for key, value in example["stringData"].items():
        assert PLACEHOLDER.search(value), key
        if key in SECRET_VARS:
            assert not PLACEHOLDER.sub("", value).strip(", "), key


def by_name_any(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_units_take_secrets_from_the_environment_file_only() -> None:
    for name, unit in units().items():
        if "Service" not in unit:
            continue
        assert not SECRET_VARS & set(unit_environment(unit)), name
        assert unit["Service"].get("EnvironmentFile") == ["/etc/bulkbackup/env"], name
    example = env_file(SYSTEMD / "env.example")
    assert SECRET_VARS - {"GITHUB_TOKEN"} <= set(example)
    for key in SECRET_VARS & set(example):
        value = example[key]
        assert PLACEHOLDER.search(value) and not PLACEHOLDER.sub("", value).strip(", "), key


def test_no_file_under_jobs_holds_a_credential() -> None:
    checked = 0
    for path in sorted(JOBS.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        text = path.read_text(errors="replace")
        checked += 1
        assert not SECRET_LOOKING.search(text), f"{path}: looks like a token or access key"
        assert not URL_PASSWORD.search(text), f"{path}: a password in a URL"
    assert checked >= 10
    # The patterns do catch what they are meant to.
    assert SECRET_LOOKING.search("GITHUB_TOKEN=ghp_" + "a1B2" * 9)
    assert SECRET_LOOKING.search("key: AKIA" + "ABCDEFGHIJ234567")
    assert URL_PASSWORD.search("redis://:hunter2@redis:6379/0")
    assert not URL_PASSWORD.search("redis://:<redis-password>@redis:6379/0")


# ---------------------------------------------------------------------------------------------
# The settings the jobs ship, and what depends on them


def load_settings(text: str, tmp_path: Path, name: str) -> config.Settings:
    path = tmp_path / name
    path.write_text(text)
    return config.load(path, environ={})


def configmap_settings(tmp_path: Path) -> config.Settings:
    cm = by_name("ConfigMap", "bulkbackup-config")
    return load_settings(cm["data"]["config.yaml"], tmp_path, "configmap.yaml")


def test_configmap_config_loads(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path)
    assert settings.store.url == "s3://github.com"
    assert settings.run.work_dir
    host = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+)", settings.redis.url)
    assert host is not None
    services = {d["metadata"]["name"] for _, d in manifests(applied_only=True)
                if d["kind"] == "Service"}
    assert host.group(1) in services, f"redis.url points to {host.group(1)}, not a Service here"


def test_every_bulkbackup_pod_reads_the_mounted_config() -> None:
    for path, doc, c in bulkbackup_containers():
        env = {e["name"]: e for e in c.get("env", [])}
        config_path = PurePosixPath(env["BULKBACKUP_CONFIG"]["value"])
        (pod,) = [p for p in pod_specs(doc) if c in p["containers"]]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = [m for m in c.get("volumeMounts", [])
                  if config_path.is_relative_to(m["mountPath"])]
        assert len(mounts) == 1, f"{path.name}: {config_path} is not on a mounted volume"
        source = volumes[mounts[0]["name"]]["configMap"]
        assert source["name"] == "bulkbackup-config"
        inside = str(config_path.relative_to(mounts[0]["mountPath"]))
        items = {i["path"]: i["key"] for i in source.get("items", [])}
        key = items.get(inside) if items else inside  # without items: one file per key
        assert key == "config.yaml", f"{path.name}: {config_path} is not the config.yaml key"


def worker_job() -> dict[str, Any]:
    jobs = [d for _, d in manifests(applied_only=True) if d["kind"] == "Job" and any(
        build_parser().parse_args(c["args"]).command == "run"
        for c in containers(d) if is_bulkbackup_image(c["image"]))]
    assert len(jobs) == 1
    return jobs[0]


def test_worker_pods_fit_the_settings(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path)
    job = worker_job()
    spec = job["spec"]
    assert spec["parallelism"] == spec["completions"] >= 1
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.run.grace_s
    (c,) = [c for c in pod["containers"] if is_bulkbackup_image(c["image"])]
    assert "command" not in c, "the image's ENTRYPOINT (tini, then bulkbackup) must stay"
    host = next(e for e in c["env"] if e["name"] == "BULKBACKUP_WORKER_HOST")
    assert host["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == settings.run.work_dir)
    work = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # Mirror + bundle + zip of the largest repository allowed fit in the work dir.
    assert quantity_bytes(work["emptyDir"]["sizeLimit"]) >= 3 * settings.run.max_repo_kb * 1000
    resources = c["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]


def quantity_bytes(text: str) -> float:
    """A Kubernetes quantity ("16Gi", "500M") in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(text))
    assert match is not None, text
    number, suffix = match.groups()
    powers = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(number) * powers[suffix]


def test_stats_cronjob_runs_daily_one_at_a_time() -> None:
    cron = by_name("CronJob", "bulkbackup-stats")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minute, hour, day, month, weekday = cron["spec"]["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    (c,) = [c for c in containers(cron) if is_bulkbackup_image(c["image"])]
    assert build_parser().parse_args(c["args"]).command == "stats"


def test_verify_runs_daily_on_a_sample(tmp_path: Path) -> None:
    settings = configmap_settings(tmp_path)
    cron = by_name("CronJob", "bulkbackup-verify")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minute, hour, day, month, weekday = cron["spec"]["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    (c,) = [c for c in containers(cron) if is_bulkbackup_image(c["image"])]
    ns = build_parser().parse_args(c["args"])
    assert ns.command == "verify" and ns.sample and not ns.logins
    (pod,) = pod_specs(cron)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == settings.run.work_dir)
    work = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # Bundle + restored repository + zip of the largest repository allowed.
    assert quantity_bytes(work["emptyDir"]["sizeLimit"]) >= 3 * settings.run.max_repo_kb * 1000
    service = units()["bulkbackup-verify.service"]["Service"]
    assert service["Type"] == ["oneshot"]
    argv = shlex.split(service["ExecStart"][0])
    assert build_parser().parse_args(argv[1:]).sample
    assert not PurePosixPath(unit_environment(units()["bulkbackup-verify.service"])["TMPDIR"]
                             ).is_relative_to("/tmp")
    timer = units()["bulkbackup-verify.timer"]["Timer"]
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]


def test_systemd_units_fit_the_settings(tmp_path: Path) -> None:
    settings = load_settings((SYSTEMD / "config.yaml").read_text(), tmp_path, "systemd.yaml")
    grace = max(settings.run.grace_s, configmap_settings(tmp_path).run.grace_s)
    unit = units()["bulkbackup-worker@.service"]
    service = unit["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key}: {service.get(key)}"
        return service[key][0]

    assert timespan_s(one("TimeoutStopSec")) > grace
    assert one("KillMode") == "mixed" and one("KillSignal") == "SIGTERM"
    assert one("SuccessExitStatus") == "130"  # `run` stopped by `systemctl stop`
    assert one("Restart") in ("always", "on-failure")
    if one("Restart") == "always":
        assert timespan_s(one("RestartSec")) >= 60, "a drained queue must not spin"
    env = unit_environment(unit)
    assert "%i" in env["BULKBACKUP_WORKER_HOST"]
    assert env["BULKBACKUP_CONFIG"] == "/etc/bulkbackup/config.yaml"
    assert one("User") not in ("root", "0")
    assert one("NoNewPrivileges") == "yes" and one("PrivateTmp") == "yes"
    # The work dir (run.work_dir, or TMPDIR when that is empty) is writable under
    # ProtectSystem=strict: a state directory or a ReadWritePaths entry.
    assert one("ProtectSystem") == "strict"
    work = settings.run.work_dir or env["TMPDIR"]
    writable = [f"/var/lib/{d}" for v in service.get("StateDirectory", []) for d in v.split()]
    writable += [p for v in service.get("ReadWritePaths", []) for p in v.split()]
    assert any(PurePosixPath(work).is_relative_to(w) for w in writable), (work, writable)
    assert not PurePosixPath(work).is_relative_to("/tmp"), "a tmpfs is too small for mirrors"

    stats = units()["bulkbackup-stats.service"]["Service"]
    assert stats["Type"] == ["oneshot"]
    timer = units()["bulkbackup-stats.timer"]["Timer"]
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]


# ---------------------------------------------------------------------------------------------
# The image


def test_dockerfile_installs_the_project_and_git() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower().replace("_", "-")
            for d in pyproject["project"]["dependencies"]}
    (base,) = dockerfile("FROM")
    version = re.fullmatch(r"python:3\.(\d+)(?:-slim\S*)?", base)
    assert version is not None and int(version.group(1)) >= 11, base
    runs = dockerfile("RUN")
    assert any(re.search(r"apt-get install\b[^&;]*\sgit(\s|$)", r) for r in runs)
    copied = " ".join(dockerfile("COPY"))
    assert "pyproject.toml" in copied and "bulkbackup/" in copied and "README.md" in copied
    installs = [seg for r in runs for seg in re.split(r"&&|;", r)
                if re.search(r"pip3? install", seg)]
    assert installs, "no pip install"
    targets = [w for seg in installs for w in shlex.split(seg.split("install", 1)[1])
               if not w.startswith("-")]
    extras = set(pyproject["project"]["optional-dependencies"])
    assert ".[serve]" in targets, "the project itself is installed, with the web server's extra"
    assert "constraints.txt" in copied and any(
        "--constraint=constraints.txt" in seg for seg in installs), "the tested versions"
    for target in targets:
        if target.startswith(".["):
            assert set(target[2:-1].split(",")) <= extras, target
            continue
        name = re.split(r"[<>=!~\[]", target, maxsplit=1)[0].lower().replace("_", "-")
        assert name in deps, f"{target} is not a dependency in pyproject.toml"
    user = dockerfile("USER")
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert dockerfile("STOPSIGNAL") == ["SIGTERM"]
    assert PurePosixPath(entrypoint()[0]).name == "tini", "PID 1 must forward signals"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (JOBS / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for rest in dockerfile("COPY"):
        for source in shlex.split(rest)[:-1]:
            assert source.rstrip("/") in kept, source


def test_every_units_documentation_is_installed_by_the_systemd_steps() -> None:
    """`Documentation=file://...` names a file that jobs/README's systemd steps install."""
    text = (JOBS / "README.md").read_text()
    steps = text[text.index("## systemd"):text.index("## cron")]
    installed = set(re.findall(r"install -D -m 0644 ([^-\s]\S*) (/usr/share/doc/\S+)", steps))
    by_glob = re.findall(r"install -D -m 0644 -t (/usr/share/doc/\S+) (\S+)", steps)
    targets = {dest for _, dest in installed}
    for folder, pattern in by_glob:
        targets |= {f"{folder}/{p.name}" for p in ROOT.glob(pattern)}
    for source, _ in installed:
        assert (ROOT / source).is_file(), f"jobs/README installs {source}, which does not exist"
    for name, unit in units().items():
        for doc in unit.get("Unit", {}).get("Documentation", []):
            for url in doc.split():
                assert url.startswith("file://"), f"{name}: {url}"
                assert url.removeprefix("file://") in targets, f"{name}: {url} is not installed"


def test_the_cron_file_is_five_time_fields_and_a_command() -> None:
    entries = [line for line in (JOBS / "cron" / "bulkbackup.cron").read_text().splitlines()
               if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(entries) == 3
    for line in entries:
        fields = line.split(None, 5)
        assert all(re.fullmatch(r"[0-9*,/-]+", f) for f in fields[:5]), line
        assert "bulkbackup" in fields[5], line


def test_the_contracts_command_lines_are_the_parsers() -> None:
    """docs/design.md's "Command line" names exactly the commands and options the CLI has."""
    text = DESIGN.read_text()
    block = re.search(r"## Command line\n```\n(.*?)```", text, re.S)
    assert block is not None
    documented: dict[str, set[str]] = {}
    for line in block.group(1).splitlines():  # a command may have lines of its own uses
        words = line.split("#")[0].replace("[", " ").replace("]", " ").split()
        command = words[3]  # bulkbackup [--config PATH] COMMAND ...
        documented.setdefault(command, set()).update(w for w in words[4:] if w.startswith("--"))
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    common = {"--help", "--config", "--debug", "--verbose"}

    def options(p: argparse.ArgumentParser) -> set[str]:
        """A parser's long options and its own subcommands' (`worker-token revoke`)."""
        found = {o for a in p._actions for o in a.option_strings if o.startswith("--")}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                found |= {o for q in a.choices.values() for o in options(q)}
        return found

    actual = {name: options(p) - common for name, p in sub.choices.items()}
    assert documented == actual
