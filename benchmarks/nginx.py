"""Debian's nginx as the ceiling for serve's downloads: its own config in a temp folder, its
own port, `daemon off`, `sendfile on`, the local store's files from disk and the S3 bucket
through `proxy_pass` (benchmarks/serve.py runs it beside `bulkbackup serve`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bulkbackup.testing.services import free_port

# Where the generated config puts the two cases (the same paths as serve's downloads below).
LOCAL_PREFIX = "/local/"
S3_PREFIX = "/s3/"


@dataclass(frozen=True)
class Nginx:
    url: str
    pid: int
    workers: str


def find() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)


def config(folder: Path, port: int, root: Path, s3_url: str | None, workers: str) -> str:
    """nginx.conf: Debian's defaults where they matter (sendfile, tcp_nopush, worker count),
    no access log, temp files in ``folder``; the proxy keeps its upstream connections and
    buffers in memory only (no temp file: serve streams too)."""
    temp = "\n".join(f"  {kind}_temp_path {folder / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the 0700 temp folder
    s3 = "" if s3_url is None else f"""
    location {S3_PREFIX} {{
      proxy_pass {s3_url}/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
    }}"""
    return f"""{user}daemon off;
worker_processes {workers};
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
{temp}
  server {{
    listen 127.0.0.1:{port};
    location {LOCAL_PREFIX} {{ alias {root}/; }}{s3}
  }}
}}
"""


# benchmarks.serve --pin: the servers (serve, nginx) and the in-process baselines on these
# cores; the clients, Redis and moto on the others (set by that benchmark).
SERVER_CORES: set[int] | None = None


def server_affinity() -> None:
    """In a server's process before it starts (preexec_fn), or in a baseline's thread."""
    if SERVER_CORES is not None:
        os.sched_setaffinity(0, SERVER_CORES)


@contextlib.contextmanager
def running(exe: str, folder: Path, root: Path, s3_url: str | None = None,
            workers: str = "auto") -> Iterator[Nginx]:
    """nginx serving ``root`` under LOCAL_PREFIX (and ``s3_url`` under S3_PREFIX)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(config(folder, port, root, s3_url, workers))
    log = folder / "stderr.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([exe, "-p", str(folder), "-e", str(folder / "error.log"),
                                 "-c", str(conf)], stdout=out, stderr=out,
                                preexec_fn=server_affinity)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()
            except urllib.error.HTTPError:
                break  # it answers (404: nothing at /)
            except OSError:
                time.sleep(0.1)
                continue
            break
        if proc.poll() is not None:
            raise SystemExit(f"nginx did not start: {log.read_text()[-2000:]}"
                             f"{(folder / 'error.log').read_text()[-2000:]}")
        yield Nginx(url, proc.pid, workers)
    finally:
        proc.terminate()
        proc.wait(15)
