"""Two `bulkbackup run` processes on two "hosts" share one Redis and one S3 store.

Each host is a network namespace of its own (a veth pair to this machine's namespace), so the
runs reach Redis, moto_server and the GitHub stand-in over a real network path, as separate
machines would. Where namespaces cannot be made (no root, no iproute2), the two runs are
separate process groups on the loopback instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port
from tests.helpers import ROOT


@dataclass
class Host:
    name: str
    netns: str | None  # None: a process group on the loopback
    server_ip: str  # where this host reaches the shared services


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _make_netns_hosts() -> list[Host] | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    tag = secrets.token_hex(3)
    hosts: list[Host] = []
    try:
        for k in (1, 2):
            ns, outside, inside = f"bb{tag}h{k}", f"bb{tag}o{k}", f"bb{tag}i{k}"
            _ip("netns", "add", ns)
            hosts.append(Host(f"host{k}", ns, f"10.231.{k}.1"))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("addr", "add", f"10.231.{k}.1/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", ns, "addr", "add", f"10.231.{k}.2/30", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError):
        _remove(hosts)
        return None
    return hosts


def _remove(hosts: list[Host]) -> None:
    for h in hosts:
        if h.netns:
            # Deleting the namespace deletes its veth end, and with it the pair.
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True, check=False)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    made = _make_netns_hosts()
    if made is None:
        yield [Host("host1", None, "127.0.0.1"), Host("host2", None, "127.0.0.1")]
        return
    try:
        yield made
    finally:
        _remove(made)


PASSWORD = secrets.token_hex(16)


@pytest.fixture
def services(hosts: list[Host], tmp_path: Path) -> Iterator[dict[str, int]]:
    """A Redis and a moto_server of their own, listening where both hosts reach them.

    Redis takes connections from other hosts only with a password (protected mode).
    """
    ips = sorted({h.server_ip for h in hosts} | {"127.0.0.1"})
    redis_port, s3_port = free_port(), free_port()
    procs = [
        subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", *ips,
                          "--requirepass", PASSWORD,
                          "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                         stdout=subprocess.DEVNULL),
        subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "0.0.0.0",
                          "-p", str(s3_port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{s3_port}/moto-api/", timeout=1)
                redis.Redis(port=redis_port, password=PASSWORD).ping()
                break
            except (OSError, redis.ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield {"redis": redis_port, "s3": s3_port}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_two_hosts_drain_one_queue_without_doing_a_user_twice(
    hosts: list[Host], services: dict[str, int], tmp_path: Path, clean_env: None
) -> None:
    forge = Forge(tmp_path / "forge", host="0.0.0.0").start()
    try:
        forge_port = int(forge.url.rsplit(":", 1)[1])
        logins = [f"mh{i:02d}" for i in range(24)]
        for login in logins:
            forge.add_user(login, [RepoSpec("repo")])
        r = redis.Redis(port=services["redis"], password=PASSWORD, decode_responses=True)
        r.zadd("tracked", {f"github.com/{x}": float("-inf") for x in logins})
        start = time.time() - 1
        cfg = tmp_path / "config.yaml"
        cfg.write_text("run:\n  lock_ttl_s: 4\n")
        runs = []
        for h in hosts:
            env = {
                **os.environ,
                "BULKBACKUP_CONFIG": str(cfg),
                "BULKBACKUP_WORKER_HOST": h.name,
                "REDIS_URL": f"redis://:{PASSWORD}@{h.server_ip}:{services['redis']}/0",
                "BULKBACKUP_STORE": "s3://github.com",
                "AWS_ENDPOINT_URL_S3": f"http://{h.server_ip}:{services['s3']}",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "GITHUB_API_URL": f"http://{h.server_ip}:{forge_port}",
            }
            prefix = ["ip", "netns", "exec", h.netns] if h.netns else []
            runs.append(subprocess.Popen(
                [*prefix, sys.executable, "-m", "bulkbackup", "run", "--procs", "2",
                 "--no-stats"],
                env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            ))
        outputs = [p.communicate(timeout=300) for p in runs]
        for p, (_, err) in zip(runs, outputs, strict=True):
            assert p.returncode == 0, err
        done = [int(err.split(" users synced")[0].rsplit(" ", 1)[-1]) for _, err in outputs]
        assert sum(done) == len(logins)
        # No user done twice: each user's one repository was cloned exactly once, and every
        # user is complete in Redis and in the shared store.
        assert [forge.clones(x, "repo") for x in logins] == [1] * len(logins)
        scores = r.zmscore("tracked", [f"github.com/{x}" for x in logins])
        assert all(s is not None and start <= s < float("inf") for s in scores)
        assert not r.keys("lock:*") and r.zcard("bulkbackup:leases") == 0
        # Both hosts took part, each under its own worker ids.
        assert all(n > 0 for n in done), done
    finally:
        forge.stop()
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{services['s3']}",
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="github.com")["Contents"]}
    assert {f"{x}/repo.bundle" for x in logins} <= keys and set(logins) <= keys
