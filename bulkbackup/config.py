"""Typed settings: defaults here, documented in config.yaml, overridden by the environment.

Precedence: built-in defaults < the YAML file < environment variables (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bulkbackup.errors import ConfigError

DEFAULT_CONFIG = Path("config.yaml")


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout_s: float = 30.0


@dataclass(frozen=True)
class StoreSettings:
    url: str = "./backup/github.com"
    create_bucket: bool = True
    multipart_threshold_mb: int = 64
    multipart_part_mb: int = 64
    list_page_size: int = 1000
    max_pool_connections: int = 10


@dataclass(frozen=True)
class GitHubSettings:
    api_url: str = "https://api.github.com"
    git_host: str = ""
    tokens: tuple[str, ...] = field(default=(), repr=False)  # secrets: never in a repr
    timeout_s: float = 30.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_rate_wait_s: float = 4000.0
    token_for_git: bool = True

    @property
    def clone_host(self) -> str:
        """The only host clone URLs may point to."""
        if self.git_host:
            return self.git_host.lower()
        api_host = (urlsplit(self.api_url).netloc or "").lower()
        return "github.com" if api_host == "api.github.com" else api_host


@dataclass(frozen=True)
class IngestSettings:
    batch_size: int = 1000
    pipeline_depth: int = 8


@dataclass(frozen=True)
class RunSettings:
    procs: int = 4
    lock_ttl_s: int = 10
    claim_batch_max: int = 32
    claim_target_s: float = 5.0
    work_dir: str = ""
    git_timeout_s: float = 3600.0
    pull_refs: bool = False
    max_repo_kb: int = 4_250_000
    skip_forks: bool = False
    grace_s: float = 30.0
    redis_retry_s: float = 60.0
    max_attempts: int = 3
    worker_host: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str = field(default="", repr=False)  # a secret: never in a repr
    redirect_downloads: bool = False


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    run: RunSettings = field(default_factory=RunSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)


def load(
    path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None
) -> Settings:
    """Load settings from ``path`` (or $BULKBACKUP_CONFIG, or ./config.yaml when it exists)."""
    env = os.environ if environ is None else environ
    explicit = path or env.get("BULKBACKUP_CONFIG")
    raw: dict[str, Any] = {}
    if explicit or DEFAULT_CONFIG.exists():
        file = Path(explicit) if explicit else DEFAULT_CONFIG
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {file}: {_first_line(exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {file}: top level must be a mapping")
        raw = loaded or {}
    settings = _build(Settings, raw, "")
    return _apply_env(settings, env)


def _apply_env(s: Settings, env: typing.Mapping[str, str]) -> Settings:
    redis_s, store_s, gh, run = s.redis, s.store, s.github, s.run
    if env.get("REDIS_URL"):
        redis_s = dataclasses.replace(redis_s, url=env["REDIS_URL"])
    if env.get("BULKBACKUP_STORE"):
        store_s = dataclasses.replace(store_s, url=env["BULKBACKUP_STORE"])
    if env.get("GITHUB_API_URL"):
        gh = dataclasses.replace(gh, api_url=env["GITHUB_API_URL"].rstrip("/"))
    if env.get("GITHUB_GIT_HOST"):
        gh = dataclasses.replace(gh, git_host=env["GITHUB_GIT_HOST"])
    tokens = [t.strip() for t in env.get("GITHUB_TOKENS", "").split(",") if t.strip()]
    if env.get("GITHUB_TOKEN", "").strip():
        tokens.insert(0, env["GITHUB_TOKEN"].strip())
    if tokens:
        gh = dataclasses.replace(gh, tokens=tuple(dict.fromkeys(tokens)))
    if env.get("BULKBACKUP_WORKER_HOST"):
        run = dataclasses.replace(run, worker_host=env["BULKBACKUP_WORKER_HOST"])
    serve = s.serve
    if env.get("BULKBACKUP_ADMIN_TOKEN", "").strip():
        serve = dataclasses.replace(serve, admin_token=env["BULKBACKUP_ADMIN_TOKEN"].strip())
    out = Settings(redis=redis_s, store=store_s, github=gh, ingest=s.ingest, run=run,
                   serve=serve)
    _validate(out)
    return out


def _validate(s: Settings) -> None:
    if urlsplit(s.github.api_url).scheme not in ("http", "https"):
        raise ConfigError(f"github.api_url must be http(s): {s.github.api_url!r}")
    if s.run.lock_ttl_s < 2:
        raise ConfigError("run.lock_ttl_s must be at least 2")
    if not 1 <= s.run.claim_batch_max <= 10_000:
        raise ConfigError("run.claim_batch_max must be between 1 and 10000")
    if s.ingest.batch_size < 1 or s.ingest.pipeline_depth < 1:
        raise ConfigError("ingest.batch_size and ingest.pipeline_depth must be positive")
    if s.store.multipart_part_mb < 5:
        raise ConfigError("store.multipart_part_mb must be at least 5 (the S3 minimum)")
    if not 0 <= s.serve.port <= 65535 or not s.serve.host:
        raise ConfigError("serve.port must be 0-65535 and serve.host non-empty")
    host = s.run.worker_host
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"worker host must be non-empty without spaces: {host!r}")


_T = typing.TypeVar("_T")


def _build(cls: type[_T], raw: object, where: str) -> _T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where or 'top level'}: expected a mapping")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key: {name}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(typing.cast(type, hint), value or {}, path)
        else:
            kwargs[name] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: object, path: str) -> object:
    if value is None:
        raise ConfigError(f"config {path}: a value is required")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {path}: expected a list of strings")
        return tuple(value)
    if isinstance(hint, types.UnionType):
        raise ConfigError(f"config {path}: unsupported type")  # pragma: no cover
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {path}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {path}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config {path}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {path}: expected a string")
        return value
    raise ConfigError(f"config {path}: unsupported type")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
