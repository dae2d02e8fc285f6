"""Private services for the demo, the benchmarks and the tests: free ports, a redis-server
with no persistence, and a moto_server (a real S3 API server process)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``check`` until it returns a true value; raise RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - not up yet: remember why, poll again
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start: {last}")


def start_redis(workdir: Path, port: int | None = None,
                extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server without persistence on ``port`` (a free one by default), answering
    once this returns; returns the process and its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        wait_until(client.ping, "redis-server")
    except RuntimeError:
        proc.kill()
        raise
    finally:
        client.close()
    return proc, url


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server for the duration of the block; yields its URL."""
    proc, url = start_redis(workdir)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def start_moto(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A moto_server process on ``port``, answering once this returns."""
    exe = shutil.which("moto_server") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with urllib.request.urlopen(url + "/moto-api/", timeout=2):  # noqa: S310 - loopback
            return True

    try:
        wait_until(up, "moto_server", 60)
    except RuntimeError:
        proc.kill()
        raise
    return proc
