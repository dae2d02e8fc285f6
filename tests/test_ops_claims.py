"""What README.md tells an operator to set up, run as written with real parts: the cron file
installed as shipped (paths moved into the test's folder), `REDIS_URL` `rediss://` on a real
redis-server speaking TLS, and the troubleshooting line of an S3 endpoint nothing answers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis

from bulkbackup.archive import layout
from bulkbackup.queue import keys
from bulkbackup.testing.forge import Forge, RepoSpec
from bulkbackup.testing.services import free_port, start_redis
from tests.helpers import (
    ROOT,
    part_missing,
    run_cli,
    run_config,
    serve_on_database,
    stop_serve,
)

CRON = ROOT / "jobs" / "cron" / "bulkbackup.cron"


def crontab(text: str) -> tuple[dict[str, str], list[str]]:
    """A crontab's variables and its entries' commands (after the five time fields)."""
    variables: dict[str, str] = {}
    commands: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if eq and " " not in name.strip():
            variables[name.strip()] = value.strip()
        else:
            commands.append(line.split(None, 5)[5])
    return variables, commands


def test_the_cron_file_runs_as_shipped(r: redis.Redis, redis_url: str, forge: Forge,
                                       tmp_path: Path) -> None:
    """README "Running on many machines": jobs/cron/bulkbackup.cron "runs a pass every night
    (`flock` keeps two apart), the stats pass after it, and a verify sample weekly". Each entry
    runs in the shell the file names, with only cron's variables and the env file it sources:
    the pass archives the tracked users, stats writes its JSON, verify checks them; a pass
    while another holds the lock does nothing."""
    etc, var = tmp_path / "etc", tmp_path / "var"
    etc.mkdir()
    var.mkdir()
    store = tmp_path / "store"
    (etc / "config.yaml").write_text(run_config())
    (etc / "env").write_text(f"REDIS_URL={redis_url}\nGITHUB_API_URL={forge.url}\n"
                             f"GITHUB_API=rest\nBULKBACKUP_STORE={store}\n")
    text = (CRON.read_text().replace("/etc/bulkbackup", str(etc))
            .replace("/var/lib/bulkbackup", str(var)))
    variables, (run, stats, verify) = crontab(text)
    assert set(variables) == {"SHELL", "BULKBACKUP_CONFIG"}, variables
    # cron's environment: its variables, a PATH where bulkbackup is installed, nothing else.
    cron_env = {**variables, "HOME": str(tmp_path),
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}

    def entry(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([variables["SHELL"], "-c", command], env=cron_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    forge.add_user("cronny", [RepoSpec("one"), RepoSpec("two")])
    r.zadd(keys.TRACKED, {keys.member("cronny"): float("-inf")})
    with (var / "run.lock").open("w") as held:  # a pass still running: this one does nothing
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert entry(run).returncode == 1
    assert r.zscore(keys.TRACKED, keys.member("cronny")) == float("-inf")
    assert entry(run).returncode == 0, (var / "run.log").read_text()
    assert (store / layout.bundle_key("cronny", "two")).stat().st_size > 0
    assert entry(stats).returncode == 0, (var / "stats.log").read_text()
    report = orjson.loads((var / "stats.log").read_text())
    assert report["repositories"]["archived"] == 2, report
    assert entry(verify).returncode == 0, (var / "verify.log").read_text()
    assert "2 archives: 2 verified" in (var / "verify.log").read_text()


def test_redis_url_rediss_speaks_tls_to_redis(clean_env: None, forge: Forge,
                                              tmp_path: Path) -> None:
    """README "Configuration": `REDIS_URL` `rediss://`, against a redis-server that speaks
    only TLS there, its certificate trusted through the URL (`ssl_ca_certs`): ingest (raw
    commands), track, and a pass of `run` (its worker processes, locks and scripts); a
    certificate not trusted is one line, exit 1."""
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    proc, plain_url = start_redis(tmp_path / "redis-tls", extra_args=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-auth-clients", "no"))
    client = redis.Redis.from_url(plain_url)
    try:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(run_config())
        env = {"REDIS_URL": f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}",
               "BULKBACKUP_STORE": str(tmp_path / "store"), "GITHUB_API_URL": forge.url,
               "GITHUB_API": "rest", "BULKBACKUP_CONFIG": str(cfg)}
        dump = tmp_path / "dump.json"
        dump.write_bytes(b'{"login": "tls-one"}\n{"login": "tls-two"}\n')
        out = run_cli("ingest", str(dump), env=env, cwd=tmp_path)
        assert out.returncode == 0 and "2 newly tracked" in out.stderr, out.stderr
        out = run_cli("track", "tls-three", env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        forge.add_users({x: [RepoSpec("r")] for x in ("tls-one", "tls-two", "tls-three")})
        out = run_cli("run", "--procs", "2", env=env, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        scores = client.zmscore(keys.TRACKED, [keys.member(x)
                                               for x in ("tls-one", "tls-two", "tls-three")])
        assert all(s is not None and s > 0 for s in scores), scores
        untrusted = {**env, "REDIS_URL": f"rediss://127.0.0.1:{tls_port}/0"}
        out = run_cli("track", "tls-four", env=untrusted, cwd=tmp_path)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in out.stderr, out.stderr
        assert client.zscore(keys.TRACKED, keys.member("tls-four")) is None
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_an_s3_endpoint_nothing_answers_is_one_line(clean_env: None, tmp_path: Path) -> None:
    """README "Troubleshooting": `cannot access bucket ...` names the endpoint to check
    (AWS_ENDPOINT_URL_S3); exit 1, as a store that may come back (botocore's retries first)."""
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "BULKBACKUP_STORE": "s3://github.com"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = run_cli("show", "octocat", env=env, cwd=cwd, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("bulkbackup: error: cannot access bucket github.com: "
                                 "Could not connect to the endpoint URL"), out.stderr
    assert env["AWS_ENDPOINT_URL_S3"] in out.stderr
    assert os.listdir(cwd) == []  # no local folder made instead


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    return cert, key


@contextlib.contextmanager
def nginx_with(server_block: str, folder: Path, port: int) -> Iterator[None]:
    """Debian's nginx running ``server_block`` (jobs/README.md's, as written) in a config of
    its own: temp files in ``folder``, `daemon off`; answering once this yields."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(exe, os.X_OK):
        part_missing("nginx is not installed (apt-get install nginx)", "the TLS proxy test: ")
    folder.mkdir()
    temps = "\n".join(f"  {kind}_temp_path {folder / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the 0700 temp folder
    conf = folder / "nginx.conf"
    conf.write_text(f"{user}daemon off;\npid {folder / 'nginx.pid'};\n"
                    f"error_log {folder / 'error.log'} warn;\nevents {{}}\n"
                    f"http {{\n  access_log {folder / 'access.log'};\n{temps}\n"
                    f"{server_block}\n}}\n")
    proc = subprocess.Popen([exe, "-p", str(folder), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_remote_worker_runs_through_the_tls_proxy_jobs_readme_shows(
        redis_server: str, forge: Forge, tmp_path: Path) -> None:
    """jobs/README.md "Remote workers behind TLS": its nginx server block as written (only
    the port, the certificate's paths and serve's port changed) in front of `serve`, and a
    remote worker's `run --server https://...` trusting the certificate through
    SSL_CERT_FILE (without it: exit 2, one line saying so): its users archived through the
    proxy (leases, uploads, completions over TLS)."""
    text = (ROOT / "jobs" / "README.md").read_text()
    (block,) = re.findall(r"^```nginx\n(.*?)^```", text, re.M | re.S)
    cert, key = self_signed(tmp_path)
    r, store, serve_env, served = serve_on_database(redis_server, 4, tmp_path)
    port = free_port()
    server_block = (block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
                    .replace("/etc/letsencrypt/live/archive.example.org/fullchain.pem",
                             str(cert))
                    .replace("/etc/letsencrypt/live/archive.example.org/privkey.pem", str(key))
                    .replace("http://127.0.0.1:8000", served.url))
    assert server_block.count(str(tmp_path)) == 2 and served.url in server_block
    try:
        with nginx_with(server_block, tmp_path / "nginx", port):
            added = run_cli("worker-token", "add", "box-tls", env=serve_env)
            assert added.returncode == 0, added.stderr
            forge.add_user("tls-ann", [RepoSpec("r1"), RepoSpec("r2", size_kb=300)])
            r.zadd("tracked", {"github.com/tls-ann": float("-inf")})
            cfg = tmp_path / "remote.yaml"
            cfg.write_text(run_config())
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("GITHUB_", "BULKBACKUP_", "REDIS_", "AWS_", "SSL_"))}
            env.update(BULKBACKUP_SERVER=f"https://127.0.0.1:{port}",
                       BULKBACKUP_WORKER_TOKEN=added.stdout.strip(),
                       GITHUB_TOKENS="remote-worker-github-token", GITHUB_API_URL=forge.url,
                       BULKBACKUP_CONFIG=str(cfg))
            work = tmp_path / "box"
            work.mkdir()
            # Not trusted: a setup to fix, not a wait (exit 2 at once, one line).
            proc = run_cli("run", "--procs", "2", env=env, cwd=work, timeout=300)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
            assert proc.stderr.startswith("bulkbackup: error: the server's TLS certificate is "
                                          "not trusted (self-signed certificate): give its "
                                          "CA's certificate in SSL_CERT_FILE"), proc.stderr
            assert r.zscore("tracked", "github.com/tls-ann") == float("-inf")
            assert "/api/lease" not in (tmp_path / "nginx" / "access.log").read_text()
            proc = run_cli("run", "--procs", "2", env={**env, "SSL_CERT_FILE": str(cert)},
                           cwd=work, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            for name in ("r1", "r2"):
                assert (store / "tls-ann" / f"{name}.bundle").stat().st_size > 0
            assert (r.zscore("tracked", "github.com/tls-ann") or 0) > 0
            log = (tmp_path / "nginx" / "access.log").read_text()
            assert "/api/lease" in log and " 200 " in log, log[-2000:]
    finally:
        stop_serve(served)
        r.close()


def test_a_github_api_whose_certificate_does_not_verify_stops_the_job(
        clean_env: None, redis_url: str, forge: Forge, tmp_path: Path) -> None:
    """A GitHub (Enterprise) behind a certificate of a private CA: without the CA, `sync`
    through either API and `events` from such a host stop at once with exit 2 and one line
    naming SSL_CERT_FILE, nothing recorded for any user (as a refused token); with
    SSL_CERT_FILE the same commands work. `run` stops at its start (the tokens' proof, REST's
    /rate_limit, meets the certificate first)."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    server_block = f"""server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ proxy_pass {forge.url}; proxy_set_header Host $http_host; }}
}}"""
    forge.add_user("tls-ghe", [])
    store = tmp_path / "store"
    https = f"https://127.0.0.1:{port}"
    env = {"GITHUB_API_URL": https, "GITHUB_TOKEN": "ghe-token", "REDIS_URL": redis_url,
           "BULKBACKUP_STORE": str(store), "GHARCHIVE_URL": https}
    with nginx_with(server_block, tmp_path / "nginx", port):
        for api in ("rest", "graphql"):
            out = run_cli("sync", "tls-ghe", env={**env, "GITHUB_API": api}, cwd=tmp_path)
            assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
            assert out.stderr.startswith(
                f"bulkbackup: error: GitHub's {'REST' if api == 'rest' else 'GraphQL'} API's "
                "TLS certificate is not trusted (self-signed certificate): give its CA's "
                "certificate in SSL_CERT_FILE"), out.stderr
            assert "ghe-token" not in out.stderr
            assert not store.exists() or not any(store.iterdir())
        r = redis.Redis.from_url(redis_url)
        r.zadd(keys.TRACKED, {keys.member("tls-ghe"): float("-inf")})
        r.close()
        out = run_cli("run", "--procs", "1", env=env, cwd=tmp_path, timeout=300)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "GitHub's REST API's TLS certificate is not trusted" in out.stderr  # the proof
        assert not store.exists() or not any(store.iterdir())
        hour = ["--from", "2026-11-01-0", "--to", "2026-11-01-0"]
        out = run_cli("events", *hour, env=env, cwd=tmp_path)
        assert out.returncode == 2 and "events.url's TLS certificate is not trusted" in \
            out.stderr and out.stderr.count("\n") == 1, out.stderr
        trusted = {**env, "SSL_CERT_FILE": str(cert)}
        for api in ("rest", "graphql"):
            out = run_cli("sync", "tls-ghe", env={**trusted, "GITHUB_API": api}, cwd=tmp_path)
            assert out.returncode == 0 and "tls-ghe: 0 repositories" in out.stdout, out.stderr
        shown = run_cli("show", "tls-ghe", "--json", env=trusted, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert orjson.loads(shown.stdout)["repositories"] == []
