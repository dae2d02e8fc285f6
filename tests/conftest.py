"""Real services for the tests: a private redis-server and a moto_server, one per session."""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bulkbackup import config, redact
from bulkbackup.store import Store, open_store
from bulkbackup.testing.forge import Forge
from bulkbackup.testing.services import free_port, start_moto, start_redis
from tests.browser import find_chromium
from tests.helpers import run_config


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only() -> Iterator[None]:
    """Tokens a test's in-process client registers for redaction are forgotten after it: a
    test token such as "t" would otherwise scrub every later test's messages in this process."""
    before = list(redact._SECRETS)
    yield
    redact._SECRETS[:] = before


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free TCP port; yields its URL."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (see .ci/run)")
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's redis-server, flushed for this test; REDIS_URL points to it."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    monkeypatch.setenv("REDIS_URL", redis_server)
    yield redis_server


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[Forge]:
    """The GitHub stand-in, serving the REST API and git over smart HTTP on a free port."""
    with Forge(tmp_path / "forge") as f:
        yield f


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API server process (moto_server) over HTTP; yields its endpoint URL."""
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def _s3_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def s3_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto_server, emptied, with boto3's environment pointing to it."""
    req = urllib.request.Request(moto_server + "/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()
    _s3_env(monkeypatch, moto_server)
    return moto_server


@pytest.fixture(params=["local", "s3"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Each store backend in turn; BULKBACKUP_STORE points to a fresh, empty one."""
    if request.param == "s3":
        # Every test starts from an empty moto: its reset endpoint drops all buckets.
        request.getfixturevalue("s3_endpoint")
        url = "s3://github.com"
    else:
        url = str(tmp_path / "backup" / "github.com")
    monkeypatch.setenv("BULKBACKUP_STORE", url)
    return url


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray configuration from the machine: an empty config file, no tokens."""
    for name in ("GITHUB_TOKEN", "GITHUB_TOKENS", "GITHUB_API_URL", "GITHUB_GIT_HOST",
                 "GITHUB_GIST_URL", "BULKBACKUP_WORKER_HOST", "BULKBACKUP_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("{}\n")
    monkeypatch.setenv("BULKBACKUP_CONFIG", str(cfg))


@pytest.fixture
def settings(clean_env: None, redis_url: str, store_url: str) -> config.Settings:
    return config.load()


@pytest.fixture
def env(clean_env: None, redis_url: str, store_url: str, forge: Forge,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """For the CLI: the stand-in's API (GITHUB_API_URL), the test's Redis, a fresh store of
    each kind, no stray configuration."""
    monkeypatch.setenv("GITHUB_API_URL", forge.url)


@pytest.fixture
def store(env: None) -> Iterator[Store]:
    """The store the CLI of ``env`` writes to, opened here to look at it."""
    s = open_store(config.load().store)
    yield s
    s.close()


@pytest.fixture
def run_env(
    clean_env: None, redis_url: str, tmp_path: Path, forge: Forge,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """For `bulkbackup run` in a child process: the test's Redis, the stand-in's API, a local
    store in tmp_path and the tests' run configuration (helpers.run_config); the environment."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(run_config())
    monkeypatch.setenv("BULKBACKUP_STORE", str(tmp_path / "backup" / "github.com"))
    monkeypatch.setenv("GITHUB_API_URL", forge.url)
    monkeypatch.setenv("BULKBACKUP_CONFIG", str(cfg))
    return {**os.environ}


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Session-scoped and first in the test's arguments: decided before any other fixture
    starts a server."""
    return find_chromium()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BULKBACKUP_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {folder}")
    return folder
