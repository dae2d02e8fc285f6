"""Every subcommand's "call the library, render, print, choose the exit code".

The only module that prints results: library functions return them (a web server reuses the
library without this). Exit codes (README "Exit codes"): 0 the command did its work, even when
users or repositories have problems that are recorded in the store (a user gone, a failed
clone: results, counted in the summary); 1 something could not be done or recorded (store or
Redis failure), raised as a BulkbackupError; 2 usage or configuration.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bulkbackup.config import Settings
from bulkbackup.errors import EXIT_INTERRUPTED, ConfigError, InvalidName, UsageError, printable
from bulkbackup.names import check_logins
from bulkbackup.timeutil import parse_strict

if TYPE_CHECKING:


    from bulkbackup.run.remote_queue import RemoteTarget


def ingest_command(settings: Settings, dump: str, limit: int | None, batch_size: int | None,
                   rejects: str | None) -> int:
    from bulkbackup.queue.ingest import ingest

    result = ingest(settings, dump, limit=limit, batch_size=batch_size, rejects_path=rejects)
    print(result.summary(), file=sys.stderr)
    return 0


def reset_command(settings: Settings) -> int:
    from bulkbackup.queue import tracked
    from bulkbackup.queue.connection import connect

    n = tracked.reset(connect(settings.redis))
    print(f"reset: {n} users are due again", file=sys.stderr)
    return 0


def stats_command(settings: Settings, as_json: bool, write: bool) -> int:
    from bulkbackup.passes.stats import collect

    report = collect(settings, write)
    if as_json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(render_stats(report))
    return 0


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_stats(report: dict[str, object]) -> str:
    rows = [(f"{section}.{name}", _cell(value))
            for section, values in report.items() if isinstance(values, dict)
            for name, value in values.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def rebuild_command(settings: Settings) -> int:
    from bulkbackup.passes.stats import rebuild
    from bulkbackup.queue import keys
    from bulkbackup.queue.connection import connect

    started = time.monotonic()
    r = connect(settings.redis)
    added = rebuild(settings, r)
    print(f"rebuild: {added} users added, {r.zcard(keys.TRACKED)} tracked, "
          f"{time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def sync_command(settings: Settings, logins: list[str]) -> int:
    """Back up the named users now. A user whose problem is recorded in the store (gone,
    a failed clone) is a result, counted in the summary: exit 0, as `run`. A user that could
    not be synced at all (rate limited past its deadline: nothing recorded) makes it exit 1."""
    from bulkbackup.backup.sync_named import sync_users

    with_errors = not_done = 0
    for result in sync_users(settings, logins):
        print(result.line(), file=sys.stdout, flush=True)
        with_errors += bool(result.error)
        not_done += bool(result.not_done)
    print(f"sync: {len(logins)} users, {with_errors} with errors, {not_done} not synced",
          file=sys.stderr)
    return 1 if not_done else 0


def show_command(settings: Settings, login: str, as_json: bool) -> int:
    from bulkbackup.passes.show import describe_user

    try:
        user = describe_user(settings.store, login)
    except InvalidName as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        sys.stdout.write(orjson.dumps(user, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_user(user))  # escaped: the store's text is untrusted
    return 0


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def render_user(user: dict[str, Any]) -> str:
    lines = [
        f"user {user['login']}",
        f"  last sync        {user['last_sync'] or '-'}",
        f"  synced repos     {_dash(user['syncd_repos'])}",
        f"  reported repos   {_dash(user['reported_repos'])}",
        f"  error            {user['error'] or '-'}",
    ]
    repos = user["repositories"]
    if not repos:
        lines.append("no repositories stored")
        return "\n".join(map(printable, lines))
    width = max(10, *(len(r["name"]) for r in repos))
    lines.append(f"{'repository':<{width}}  {'last sync':<20}  {'bundle':>9}  {'zip':>9}  error")
    for r in repos:
        lines.append(f"{r['name']:<{width}}  {r['last_sync'] or '-':<20}  "
                     f"{_size(r['bundle_bytes']):>9}  {_size(r['zip_bytes']):>9}  "
                     f"{r['error'] or '-'}")
    wikis = sum(1 for r in repos if r.get("wiki_of") and r["bundle_bytes"])
    if user.get("gists") or user.get("gists_error"):
        lines.append(f"gists {user['gists']}" + (f"; {user['gists_error']}"
                                                   if user.get("gists_error") else ""))
    lfs = [r for r in repos if r.get("lfs_objects") or r.get("lfs_error")]
    if wikis or lfs:
        lines.append(f"wikis {wikis}, LFS objects "
                     f"{sum(r['lfs_objects'] for r in lfs)} "
                     f"({_size(sum(r['lfs_bytes'] for r in lfs))})")
    lines += [f"{r['name']}: LFS: {r['lfs_error']}" for r in lfs if r.get("lfs_error")]
    released = [r for r in repos if r.get("assets") or r.get("releases_error")]
    if released:
        lines.append(f"release assets {sum(r['assets'] for r in released)} "
                     f"({_size(sum(r['asset_bytes'] for r in released))})")
    lines += [f"{r['name']}: releases: {r['releases_error']}" for r in released
              if r.get("releases_error")]
    return "\n".join(map(printable, lines))


def run_command(settings: Settings, procs: int | None, max_users: int | None,
                with_stats: bool, remote: RemoteTarget | None = None) -> int:
    """`bulkbackup run`: the run, its summary line, the stats pass; the exit code.
    ``remote`` (`run --server`): leased from `serve`; its stats pass is the server's."""
    from bulkbackup.errors import BulkbackupError
    from bulkbackup.run.supervisor import run

    _preflight(settings, remote)
    report = run(settings, procs, max_users,
                 notify=lambda message: print(f"bulkbackup: {message}", file=sys.stderr),
                 remote=remote)
    totals = report.totals
    print(totals.summary(), file=sys.stderr)
    if report.fatal and totals.failure_code == ConfigError.exit_code:
        raise ConfigError(totals.failure)  # e.g. a token refused mid-run: users given back
    if report.fatal:
        raise BulkbackupError(f"{report.fatal}: {totals.failure}" if totals.failure
                              else report.fatal)
    code = 0
    if with_stats and remote is None and not report.stopped_by_signal:
        code = stats_command(settings, as_json=False, write=True)
    problems = []
    if report.users_lost:
        problems.append(
            f"{report.users_lost} users were lost from `tracked` mid-run (Redis flushed or "
            "restarted without persistence) and are not in the store: ingest them again")
    if report.deferred:
        problems.append(
            f"{report.deferred} users failed {settings.run.max_attempts} times on store or "
            "Redis errors or rate limits and are left for the next run (see the log)")
    if report.stopped_by_signal:
        # Stopped before its work was done, whatever else happened: 130, as `sync` (the
        # problems are still said, on the line before).
        if problems:
            print(f"bulkbackup: error: {'; '.join(problems)}", file=sys.stderr)
        print("bulkbackup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if problems:
        raise BulkbackupError("; ".join(problems))
    return code


def _preflight(settings: Settings, remote: RemoteTarget | None = None) -> None:
    """Open the store once (remote: ask the server, with the worker token) and prove the
    GitHub tokens before any worker starts: a missing bucket, refused credentials, a worker
    token the server refuses or a token GitHub refuses is then a ConfigError (exit 2, so
    systemd stops restarting) before any user is claimed, not N workers failing."""
    from bulkbackup.store import open_store

    if remote is None:
        open_store(settings.store).close()
    else:
        client = remote.client()
        try:
            client.status()
        finally:
            client.close()
    _prove_tokens(settings, remote is None)


def _prove_tokens(settings: Settings, shared: bool = True) -> None:
    """One free call per token, `GET /rate_limit` (REST's: a GraphQL query would cost a
    point per token and run), through the shared quota broker: TokenRefused (exit 2) names
    a refused token's place. GraphQL without a token: a `rateLimit` query (1 point), which
    GitHub refuses; anonymous REST needs no proof."""
    from bulkbackup.forge.github_graphql import GraphQLLister
    from bulkbackup.forge.github_rest import GitHub
    from bulkbackup.forge.quota_broker import QuotaBroker
    from bulkbackup.queue.connection import connect

    r = connect(settings.redis) if shared else None  # not shared: no Redis (run --server)
    broker = QuotaBroker(r, settings.github.tokens)
    graphql_anonymous = settings.github.api == "graphql" and not settings.github.tokens
    client = (GraphQLLister(settings.github, broker) if graphql_anonymous
              else GitHub(settings.github, broker=broker))
    try:
        client.prove_tokens()
    finally:
        client.close()
        if r is not None:
            r.close()


def _parse_time(text: str) -> datetime:
    """An RFC 3339 time from the command line (`2026-11-28T17:00:00Z`)."""
    parsed = parse_strict(text)
    if parsed is None:
        raise UsageError(f"--at: not an RFC 3339 time: {text!r:.60} "
                         "(e.g. 2026-11-28T17:00:00Z)")
    return parsed


def restore_command(settings: Settings, target: str, to: str, at: str | None, with_zip: bool,
                    force: bool) -> int:
    from bulkbackup.archive.stored import stored_spelling
    from bulkbackup.passes.restore import RestoreOptions, Status, parse_target, restore
    from bulkbackup.store import open_store

    try:
        login, repo = parse_target(target)
    except InvalidName as exc:
        raise UsageError(str(exc)) from None
    if Path(to).exists() and not Path(to).is_dir():
        raise UsageError(f"--to {to}: not a directory")
    opts = RestoreOptions(to=Path(to), at=_parse_time(at) if at else None, with_zip=with_zip,
                          force=force)
    store = open_store(settings.store, create=False)
    try:
        login = stored_spelling(store, login)  # logins ignore case: the stored spelling
        report = restore(store, settings, login, repo, opts)
    finally:
        store.close()
    for r in report.repos:
        if r.status is Status.FAILED:
            print(f"{r.login}/{r.repo}: FAILED: {printable(r.reason)}", flush=True)
            continue
        if r.status is Status.NO_ARCHIVE:
            print(f"{r.login}/{r.repo}: no archive: {printable(r.reason)}", flush=True)
            continue
        what = "empty repository" if r.status is Status.EMPTY else f"{r.refs} refs"
        extra = f", HEAD {r.branch}" if r.branch else ""
        extra += f", zip {r.zip_path}" if r.zip_path else ""
        extra += f", {r.lfs_objects} LFS objects" if r.lfs_objects else ""
        extra += f", {r.assets} release assets" if r.assets else ""
        print(f"{r.login}/{r.repo}: restored to {r.path} ({what}{extra})", flush=True)
    missing = len(report.without_archive)
    done = len(report.repos) - len(report.failed) - missing
    print(f"restore: {done} repositories restored, {missing} without archive, "
          f"{len(report.failed)} failed", file=sys.stderr)
    return 1 if report.failed else 0


def serve_command(settings: Settings, host: str | None, port: int | None) -> int:
    """Serve until SIGINT/SIGTERM. Binds serve.host (127.0.0.1 unless told otherwise)."""
    from bulkbackup.config import store_scheme
    from bulkbackup.errors import ConfigError

    try:
        from bulkbackup.web.server import bound_address, listen, serve
    except ImportError as exc:
        raise ConfigError(f"serve needs the optional dependencies: pip install "
                          f"'bulkbackup[serve]' ({exc.name} is missing)") from None
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, not {port}")
    # A store folder that is not there is a mistyped path: exit 2, as `show` (serve never
    # creates it). A bucket is not asked for here: the health check says when it is missing.
    if store_scheme(settings.store.url) != "s3":
        from bulkbackup.store import open_store

        open_store(settings.store, create=False).close()
    sock = listen(host, port)
    print(f"bulkbackup serve: http://{bound_address(sock)}/ (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    serve(settings, sock)
    return 0


def track_command(settings: Settings, logins: list[str]) -> int:
    """Add users by hand (ZADD NX -inf, as ingest): each one added or already tracked (under
    its tracked spelling: logins ignore case). With a GitHub token, a login not tracked yet
    is added as GitHub spells it, and not at all when GitHub has no such user."""
    from bulkbackup.queue import tracked
    from bulkbackup.queue.connection import connect

    check_logins(logins)
    r = connect(settings.redis)
    unknown: list[str] = []
    if settings.github.tokens:
        logins, unknown = _github_spellings(settings, r, logins)
    added, existing = tracked.add_never_synced(r, logins)
    for login in added:
        print(f"{login}: added")
    for login, spelled in existing:
        print(f"{login}: already tracked" + (f" as {spelled}" if spelled != login else ""))
    for login in unknown:
        print(f"{login}: not found on GitHub, not added")
    print(f"track: {len(added)} added, {len(existing)} already tracked"
          + (f", {len(unknown)} not found on GitHub" if unknown else ""), file=sys.stderr)
    return 0


def _github_spellings(settings: Settings, r: Any, logins: list[str]
                      ) -> tuple[list[str], list[str]]:
    """(``logins``, those not tracked yet as GitHub spells them; those GitHub does not
    know): one `GET /users/<login>` per login not tracked under any spelling."""
    from bulkbackup.forge.github_rest import GitHub
    from bulkbackup.queue.logins import tracked_spelling

    github = GitHub(settings.github)
    spelled: list[str] = []
    unknown: list[str] = []
    try:
        for login in dict.fromkeys(logins):
            name = login if tracked_spelling(r, login) else github.login_of(login)
            (spelled if name else unknown).append(name or login)
    finally:
        github.close()
    return spelled, unknown
