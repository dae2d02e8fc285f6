"""Typed settings: defaults here, documented in config.yaml, overridden by the environment.

Precedence: built-in defaults < the YAML file < environment variables (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bulkbackup import settings_yaml
from bulkbackup.errors import ConfigError, one_line

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
    # GitHub's web side: serve's "Sign in with GitHub" (OAuth web flow) goes there.
    web_url: str = "https://github.com"
    git_host: str = ""
    # Where gists' git repositories are (`<gist_url>/<id>.git`); "": derived (gist_base).
    gist_url: str = ""
    # Hosts a release asset's download may be redirected to (GitHub's asset storage),
    # followed without the token; the download itself must be on the git or the API host.
    asset_hosts: tuple[str, ...] = ("objects.githubusercontent.com",
                                    "release-assets.githubusercontent.com")
    tokens: tuple[str, ...] = field(default=(), repr=False)  # secrets: never in a repr
    timeout_s: float = 30.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_rate_wait_s: float = 4000.0
    token_for_git: bool = True
    allow_http_token: bool = False  # test/dev only: also send git the token over plain http
    page_size: int = 100
    max_pages: int = 1000
    user_deadline_s: float = 600.0
    max_response_mb: int = 16
    max_listing_mb: int = 1024
    # Listing API: "graphql" (a claimed batch in one query) or "rest" (one request per user).
    api: str = "graphql"
    # GraphQL endpoint; empty: derived from api_url (see graphql_endpoint).
    graphql_url: str = ""
    # Users per GraphQL query (100 costs 1 point; more would cost more).
    graphql_batch: int = 100

    @property
    def graphql_endpoint(self) -> str:
        """`graphql_url`, else `{api_url}/graphql`, or `{host}/api/graphql` for a GitHub
        Enterprise REST base ending in `/api/v3`."""
        if self.graphql_url:
            return self.graphql_url.rstrip("/")
        base = self.api_url.rstrip("/")
        if base.endswith("/api/v3"):
            return base.removesuffix("/v3") + "/graphql"
        return base + "/graphql"

    @property
    def gist_base(self) -> str:
        """`gist_url`, else github.com's `https://gist.github.com`, else (GitHub Enterprise,
        the stand-in) `<api scheme>://<clone_host>/gist`."""
        if self.gist_url:
            return self.gist_url.rstrip("/")
        if self.clone_host == "github.com":
            return "https://gist.github.com"
        return f"{urlsplit(self.api_url).scheme}://{self.clone_host}/gist"

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
    listing_cache_s: int = 600  # a listing handed over with its user, kept (0: none handed over)
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
    git_low_speed_bytes_s: int = 1000
    git_low_speed_time_s: int = 120
    git_threads: int = 0  # 0: the cores shared among the procs (gitops.git_threads)
    git_big_file_mb: int = 64
    max_increments: int = 16
    keep_history_days: int = 365
    # More than git (docs/archive.md "Wikis and Git LFS objects"): each on by default.
    wikis: bool = True
    lfs: bool = True
    max_lfs_object_mb: int = 2048  # an LFS object larger than this is not fetched
    max_lfs_repo_mb: int = 20480  # LFS bytes fetched for one repository in one pass
    releases: bool = True
    gists: bool = True  # a user's public gists (docs/archive.md "Gists")
    max_asset_mb: int = 2048  # a release asset larger than this is recorded, not fetched


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str = field(default="", repr=False)  # a secret: never in a repr
    redirect_downloads: bool = False
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # "Sign in with GitHub" (an OAuth app's id and secret; both set: the button shows).
    github_client_id: str = ""
    github_client_secret: str = field(default="", repr=False)  # a secret
    # Signs the session and sign-in cookies; empty: a random one per process (sessions end
    # when serve restarts, and replicas do not share them).
    session_secret: str = field(default="", repr=False)  # a secret
    # Anyone may add logins that exist on GitHub, at most public_add_per_hour per address.
    public_add: bool = False
    public_add_per_hour: int = 10
    # A priority user (signed in with GitHub) is synced at least this often (queue/claims.py).
    priority_hours: float = 24.0
    # The lease API of remote workers (DESIGN.md "Remote workers", docs/serve.md).
    max_upload_mb: int = 8192
    upload_timeout_s: float = 3600.0
    # On S3: archives go from the worker to the bucket by a presigned PUT, then serve checks
    # and commits them (web/lease_uploads.py); off, or on a local store: through serve.
    direct_uploads: bool = True
    # Smaller archives go through serve all the same: their commit (four store requests)
    # costs serve more CPU than carrying their bytes (docs/benchmarks.md, remote).
    direct_uploads_min_kb: int = 2048
    lease_batch_max: int = 100
    # Per worker token. A user of r repositories costs about 3 + 2r requests (its state, an
    # upload per archive, complete) and a process syncs up to ~10 small users a second:
    # 500/s lets a pool of 8 processes run unthrottled on one token, and still bounds a
    # runaway client to about one core of serve (~1-2 ms of its CPU per request).
    lease_requests_per_s: float = 500.0
    lease_burst: int = 1000


@dataclass(frozen=True)
class EventsSettings:
    url: str = "https://data.gharchive.org"
    full_pass_days: int = 30
    gap_hours: float = 6.0
    poll_s: float = 60.0
    hour_timeout_s: float = 1800.0
    max_hour_mb: int = 4096


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    run: RunSettings = field(default_factory=RunSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    events: EventsSettings = field(default_factory=EventsSettings)


def load(
    path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None
) -> Settings:
    """Load settings from ``path`` (or $BULKBACKUP_CONFIG, or ./config.yaml when it exists)."""
    env = os.environ if environ is None else environ
    explicit = path or env.get("BULKBACKUP_CONFIG")
    raw: dict[str, Any] = {}
    if explicit or DEFAULT_CONFIG.exists():
        raw = settings_yaml.read_mapping(Path(explicit) if explicit else DEFAULT_CONFIG)
    settings = settings_yaml.build(Settings, raw, "")
    return _apply_env(settings, env)


def token_origin(env: typing.Mapping[str, str] | None = None) -> str:
    """Where the tokens came from, to name one by position (`GITHUB_TOKENS token 2 of 3`):
    the variables `_apply_env` reads (GITHUB_TOKEN first), else the settings file."""
    env = os.environ if env is None else env
    names = [n for n in ("GITHUB_TOKEN", "GITHUB_TOKENS") if env.get(n, "").strip(", ")]
    return "+".join(names) or "github.tokens"


def _apply_env(s: Settings, env: typing.Mapping[str, str]) -> Settings:
    redis_s, store_s, gh, run = s.redis, s.store, s.github, s.run
    if env.get("REDIS_URL"):
        redis_s = dataclasses.replace(redis_s, url=env["REDIS_URL"])
    if env.get("BULKBACKUP_STORE"):
        store_s = dataclasses.replace(store_s, url=env["BULKBACKUP_STORE"])
    if "://" not in store_s.url:
        store_s = dataclasses.replace(store_s, url=absolute_folder(store_s.url))
    if env.get("GITHUB_API_URL"):
        gh = dataclasses.replace(gh, api_url=env["GITHUB_API_URL"].rstrip("/"))
    if env.get("GITHUB_GRAPHQL_URL"):
        gh = dataclasses.replace(gh, graphql_url=env["GITHUB_GRAPHQL_URL"].rstrip("/"))
    if env.get("GITHUB_API"):
        gh = dataclasses.replace(gh, api=env["GITHUB_API"].strip())
    if env.get("GITHUB_WEB_URL"):
        gh = dataclasses.replace(gh, web_url=env["GITHUB_WEB_URL"].rstrip("/"))
    if env.get("GITHUB_GIT_HOST"):
        gh = dataclasses.replace(gh, git_host=env["GITHUB_GIT_HOST"])
    if env.get("GITHUB_GIST_URL"):
        gh = dataclasses.replace(gh, gist_url=env["GITHUB_GIST_URL"].rstrip("/"))
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
    for var, name in (("BULKBACKUP_GITHUB_CLIENT_ID", "github_client_id"),
                      ("BULKBACKUP_GITHUB_CLIENT_SECRET", "github_client_secret"),
                      ("BULKBACKUP_SESSION_SECRET", "session_secret")):
        if env.get(var, "").strip():
            changed: dict[str, Any] = {name: env[var].strip()}
            serve = dataclasses.replace(serve, **changed)
    events = s.events
    if env.get("GHARCHIVE_URL", "").strip():
        events = dataclasses.replace(events, url=env["GHARCHIVE_URL"].strip())
    out = Settings(redis=redis_s, store=store_s, github=gh, ingest=s.ingest, run=run,
                   serve=serve, events=events)
    _validate(out)
    if store_scheme(out.store.url) == "s3":
        _check_endpoints(env)
    return out


# (least, greatest) of numeric settings; None: no upper bound. A numeric setting not named
# here must be finite and not negative.
_RANGES: dict[str, tuple[float, float | None]] = {
    "redis.socket_timeout_s": (0.1, 3600),
    "store.multipart_threshold_mb": (5, None),
    "store.multipart_part_mb": (5, 5120),  # S3's limits on one part
    "store.list_page_size": (1, 1000),
    "store.max_pool_connections": (1, 1000),
    "github.timeout_s": (0.1, 3600),
    "github.max_retries": (0, 100),
    "github.backoff_s": (0, 3600),
    "github.max_rate_wait_s": (0, 86_400),
    "github.page_size": (1, 100),  # GitHub's maximum per_page
    "github.max_pages": (1, None),
    "github.user_deadline_s": (0.1, 7 * 86_400),
    "github.max_response_mb": (1, None),
    "github.max_listing_mb": (1, None),
    "github.graphql_batch": (1, 100),  # 100 aliases cost 1 point; more would cost more
    "ingest.batch_size": (1, 1_000_000),
    "ingest.pipeline_depth": (1, 10_000),
    "run.procs": (1, 1024),
    "run.lock_ttl_s": (2, 86_400),
    "run.claim_batch_max": (1, 10_000),
    "run.listing_cache_s": (0, 86_400),
    "run.claim_target_s": (0.1, 86_400),
    "run.git_timeout_s": (1, 7 * 86_400),
    "run.max_repo_kb": (0, None),
    "run.grace_s": (0, 86_400),
    "run.redis_retry_s": (0, 86_400),
    "run.max_attempts": (1, 1000),
    "serve.port": (0, 65535),
    "serve.header_timeout_s": (0.1, 3600),
    "serve.body_timeout_s": (0.1, 3600),
    "serve.public_add_per_hour": (1, 1_000_000),
    "serve.priority_hours": (0.01, 100 * 366 * 24),
    "serve.max_upload_mb": (1, None),
    "serve.direct_uploads_min_kb": (0, None),
    "serve.upload_timeout_s": (1, 7 * 86_400),
    "serve.lease_batch_max": (1, 10_000),
    "serve.lease_requests_per_s": (0.01, 1_000_000),
    "serve.lease_burst": (1, 1_000_000),
    "run.git_low_speed_bytes_s": (0, None),  # 0: no low-speed limit
    "run.git_low_speed_time_s": (1, 86_400),
    "run.git_threads": (0, 64),
    "run.git_big_file_mb": (1, 4096),
    "run.max_increments": (0, 10_000),  # 0: every change is a full archive
    "run.keep_history_days": (0, 100 * 366),  # 0: no history kept past the current chain
    "events.full_pass_days": (1, 100 * 366),
    "events.gap_hours": (0, 100 * 366 * 24),
    "events.poll_s": (0.01, 86_400),
    "events.hour_timeout_s": (1, 7 * 86_400),
    "events.max_hour_mb": (1, None),
}


def _check_numbers(s: Settings) -> None:
    """Every int/float setting is finite and within its range: a zero timeout or a zero
    process count is refused here, not met as a hang or a run that does nothing."""
    for section in dataclasses.fields(s):
        values = getattr(s, section.name)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = f"{section.name}.{f.name}"
            least, most = _RANGES.get(name, (0, None))
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, not {value}")
            if value < least:
                raise ConfigError(f"{name} must be at least {least:g}, not {value}")
            if most is not None and value > most:
                raise ConfigError(f"{name} must be at most {most:g}, not {value}")


def store_scheme(url: str) -> str:
    """"s3" for ``s3://BUCKET``, "" for a local folder path; any other ``scheme://`` or a
    malformed s3 URL is a ConfigError (never a local folder named `s4:`)."""
    if "://" not in url:
        return ""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not url.startswith("s3://"):
        raise ConfigError(f"store.url {url!r}: unknown scheme {parts.scheme + '://'!r} "
                          "(a local folder path or s3://BUCKET)")
    if not parts.netloc:
        raise ConfigError(f"store.url {url!r}: no bucket name (s3://BUCKET)")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"store.url {url!r}: only a bucket is allowed (s3://BUCKET), "
                          "no path, query or fragment")
    return "s3"


def absolute_folder(path: str) -> str:
    """A local store folder as an absolute path, resolved once at load: git and the web
    server read the store's files from other working folders (`./backup/github.com`, the
    default, would otherwise name a different folder in each)."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _check_endpoints(env: typing.Mapping[str, str]) -> None:
    """boto3's endpoint variables, checked here so a typo is one line and exit 2."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = env.get(name, "")
        if not value:
            continue
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"{name} is not a URL: {value!r} ({one_line(exc)})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{name} must be an http(s) URL with a host: {value!r}")


def _validate(s: Settings) -> None:
    if urlsplit(s.github.api_url).scheme not in ("http", "https"):
        raise ConfigError(f"github.api_url must be http(s): {s.github.api_url!r}")
    _check_numbers(s)
    store_scheme(s.store.url)
    if s.github.api not in ("graphql", "rest"):
        raise ConfigError(f"github.api must be graphql or rest: {s.github.api!r}")
    if urlsplit(s.github.web_url).scheme not in ("http", "https"):
        raise ConfigError(f"github.web_url must be http(s): {s.github.web_url!r}")
    if s.github.gist_url and urlsplit(s.github.gist_url).scheme not in ("http", "https"):
        raise ConfigError(f"github.gist_url must be http(s): {s.github.gist_url!r}")
    if s.github.graphql_url and urlsplit(s.github.graphql_url).scheme not in ("http", "https"):
        raise ConfigError(f"github.graphql_url must be http(s): {s.github.graphql_url!r}")
    if urlsplit(s.events.url).scheme not in ("http", "https"):
        raise ConfigError(f"events.url must be http(s): {s.events.url!r}")
    if not s.serve.host:
        raise ConfigError("serve.host must not be empty")
    host = s.run.worker_host
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"worker host must be non-empty without spaces: {host!r}")
