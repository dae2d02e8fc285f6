"""`bulkbackup restore` and `bulkbackup verify`: call the library, print, choose the exit code."""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime
from pathlib import Path

import orjson
import redis

from bulkbackup import tracked
from bulkbackup.backup import work_dir
from bulkbackup.config import Settings
from bulkbackup.errors import InvalidName, UsageError
from bulkbackup.names import check_login
from bulkbackup.restore import RestoreOptions, Status, parse_target, restore
from bulkbackup.store import open_store
from bulkbackup.timeutil import parse_rfc3339
from bulkbackup.verify import Outcome, VerifyReport, sample_logins, save_figures, verify

log = logging.getLogger(__name__)

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time from the command line (`2026-11-28T17:00:00Z`)."""
    parsed = parse_rfc3339(text.upper()) if _RFC3339.fullmatch(text) else None
    if parsed is None:
        raise UsageError(f"--at: not an RFC 3339 time: {text!r:.60} "
                         "(e.g. 2026-11-28T17:00:00Z)")
    return parsed


def restore_command(settings: Settings, target: str, to: str, at: str | None, with_zip: bool,
                    force: bool) -> int:
    try:
        login, repo = parse_target(target)
    except InvalidName as exc:
        raise UsageError(str(exc)) from None
    opts = RestoreOptions(to=Path(to), at=parse_time(at) if at else None, with_zip=with_zip,
                          force=force)
    store = open_store(settings.store)
    try:
        report = restore(store, settings, login, repo, opts)
    finally:
        store.close()
    for r in report.repos:
        if r.status is Status.FAILED:
            print(f"{r.login}/{r.repo}: FAILED: {r.reason}", flush=True)
            continue
        what = "empty repository" if r.status is Status.EMPTY else f"{r.refs} refs"
        extra = f", HEAD {r.branch}" if r.branch else ""
        extra += f", zip {r.zip_path}" if r.zip_path else ""
        print(f"{r.login}/{r.repo}: restored to {r.path} ({what}{extra})", flush=True)
    done = len(report.repos) - len(report.failed)
    print(f"restore: {done} repositories restored, {len(report.failed)} failed",
          file=sys.stderr)
    return 1 if report.failed else 0


def verify_command(settings: Settings, logins: list[str], sample: int | None,
                   as_json: bool) -> int:
    for login in logins:
        try:
            check_login(login)
        except InvalidName as exc:
            raise UsageError(str(exc)) from None
    if bool(logins) == (sample is not None):
        raise UsageError("verify: name users (LOGIN...) or give --sample N, one of the two")
    store = open_store(settings.store)
    try:
        chosen = logins or sample_logins(store, sample or 0)
        with work_dir(settings, "verify") as scratch:
            report = verify(store, settings, chosen, scratch)
    finally:
        store.close()
    _save(settings, report)
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        print(render(report), flush=True)
    t = report.totals()
    print(f"verify: {t['users']} users, {t['archives']} archives: {t['verified']} verified, "
          f"{t['failed']} failed, {t['no_archive']} without archive "
          f"({t['elapsed_s']:.1f}s)", file=sys.stderr)
    return 1 if report.failed else 0


def _save(settings: Settings, report: VerifyReport) -> None:
    """The figures for `stats`; Redis being away does not make the verify fail."""
    try:
        r = tracked.connect(settings.redis)
        save_figures(r, report)
        r.close()
    except redis.RedisError as exc:
        print(f"bulkbackup: warning: verify figures not saved in Redis: {exc}", file=sys.stderr)


def render(report: VerifyReport) -> str:
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
    return "\n".join(lines) if lines else "no users to verify"
