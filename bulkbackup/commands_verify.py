"""`bulkbackup verify`: call the verify pass, render, print, choose the exit code (as
commands.py does for the other subcommands; apart for its size). Named users, or a sample
that takes the increments `run` committed first (queue/pending.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from bulkbackup.config import Settings
from bulkbackup.errors import UsageError, printable
from bulkbackup.names import check_logins

if TYPE_CHECKING:
    import redis

    from bulkbackup.passes.verify import VerifyReport


def verify_command(settings: Settings, logins: list[str], sample: int | None,
                   as_json: bool) -> int:
    from bulkbackup.archive.stored import stored_spelling
    from bulkbackup.passes.verify import sample_logins, verify
    from bulkbackup.store import open_store
    from bulkbackup.workdir import work_dir

    check_logins(logins)
    if bool(logins) == (sample is not None):
        raise UsageError("verify: name users (LOGIN...) or give --sample N, one of the two")
    store = open_store(settings.store, create=False)
    r = _verify_redis(settings)
    try:
        started_s = time.time()
        # Logins ignore case: each named user under its stored spelling.
        named = list(dict.fromkeys(stored_spelling(store, x) for x in logins))
        chosen = named or _pending_first(r, sample or 0, lambda n, skip: sample_logins(
            store, n, skip=skip))
        with work_dir(settings, "verify") as scratch:
            report = verify(store, settings, chosen, scratch)
        _forget_pending(r, report, started_s)
    finally:
        store.close()
    _save_verify_figures(settings, report)
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        print(_render_verify(report), flush=True)
    t = report.totals()
    print(f"verify: {t['users']} users, {t['archives']} archives: {t['verified']} verified, "
          f"{t['failed']} failed, {t['no_archive']} without archive "
          f"({t['elapsed_s']:.1f}s)", file=sys.stderr)
    return 1 if report.failed else 0


def _verify_redis(settings: Settings) -> redis.Redis | None:
    """Redis for the repositories pending verify; away, verify samples at random only."""
    import redis

    from bulkbackup.queue.connection import connect

    try:
        r = connect(settings.redis)
        r.ping()
        return r
    except redis.RedisError as exc:
        print(f"bulkbackup: warning: no Redis, the repositories pending verify are not "
              f"checked first: {exc}", file=sys.stderr)
        return None


def _pending_first(r: redis.Redis | None, n: int,
                   sample: Callable[[int, set[str]], list[str]]) -> list[str]:
    """``n`` users: those with repositories pending verify (oldest commit first), then a
    random sample of the others."""
    import redis

    from bulkbackup.queue import pending

    first: list[str] = []
    if r is not None:
        try:
            first = list(dict.fromkeys(login for login, _ in pending.oldest(r, n)))
        except redis.RedisError as exc:
            print(f"bulkbackup: warning: repositories pending verify not read: {exc}",
                  file=sys.stderr)
    rest = sample(n - len(first), set(first)) if n > len(first) else []
    return first + rest


def _forget_pending(r: redis.Redis | None, report: VerifyReport, started_s: float) -> None:
    """Repositories whose result was recorded are no longer pending."""
    import redis

    from bulkbackup.queue import pending

    if r is None:
        return
    try:
        for user in report.users:
            for repo in user.repos:
                if repo.recorded:
                    pending.done(r, user.login, repo.name, started_s)
    except redis.RedisError as exc:
        print(f"bulkbackup: warning: repositories pending verify not updated: {exc}",
              file=sys.stderr)


def _save_verify_figures(settings: Settings, report: VerifyReport) -> None:
    """The figures for `stats`; Redis being away does not make the verify fail."""
    import redis

    from bulkbackup.passes.verify import save_figures
    from bulkbackup.queue.connection import connect

    try:
        r = connect(settings.redis)
        save_figures(r, report)
        r.close()
    except redis.RedisError as exc:
        print(f"bulkbackup: warning: verify figures not saved in Redis: {exc}", file=sys.stderr)


def _render_verify(report: VerifyReport) -> str:
    from bulkbackup.passes.verify import Outcome

    lines = []
    for user in report.users:
        if user.error:
            lines.append(f"{user.login}: FAILED: {user.error}")
            continue
        lines.append(f"{user.login}: {len(user.repos)} archives, "
                     f"{user.count(Outcome.VERIFIED)} verified, {user.count(Outcome.FAILED)} "
                     f"failed, {user.count(Outcome.NO_ARCHIVE)} without archive")
        lines += [f"  {r.name}: FAILED: {r.reason}" for r in user.repos
                  if r.outcome is Outcome.FAILED]
        lines += [f"  {r.name}: verified, noted: {r.notes}" for r in user.repos
                  if r.outcome is Outcome.VERIFIED and r.notes]
    return "\n".join(map(printable, lines)) if lines else "no users to verify"
