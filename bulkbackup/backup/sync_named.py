"""`bulkbackup sync LOGIN...`: the named users backed up now, in the order named, without
queue or locks (backup/user_backup.py does each one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from bulkbackup.archive.stored import stored_spelling
from bulkbackup.backup.results import UserResult
from bulkbackup.backup.user_backup import UserBackup
from bulkbackup.config import Settings
from bulkbackup.errors import RateLimited
from bulkbackup.forge.github_lister import open_github_lister
from bulkbackup.forge.listing import Lister, OwnerListing
from bulkbackup.forge.quota_broker import QuotaBroker
from bulkbackup.git.gitops import GitWork
from bulkbackup.interrupts import signals_interrupt
from bulkbackup.names import check_logins
from bulkbackup.store import open_store
from bulkbackup.workdir import work_dir


def sync_users(settings: Settings, logins: list[str]) -> Iterator[UserResult]:
    """Back up the named users now, without queue or locks: each one's result as it ends, in
    the order named.

    They are listed by the lister `github.api` names, as in `run`: with `graphql`, up to
    `github.graphql_batch` users a query (the first query before the first sync); with
    `rest`, each just before its sync. The quota is this process's own (no Redis). A problem
    recorded in the store (a user gone, a failed clone) is in its result; a failure to record
    (store unreachable) raises.
    """
    check_logins(logins)
    store = open_store(settings.store)
    stop = threading.Event()
    broker = QuotaBroker(None, settings.github.tokens)
    job: UserBackup | None = None
    lister = open_github_lister(settings.github, broker, stop,
                                lambda login: job.conditions(login) if job else [],
                                settings.run.gists)
    try:
        # Logins ignore case: a user already archived is synced under its stored spelling.
        logins = list(dict.fromkeys(stored_spelling(store, x) for x in logins))
        with signals_interrupt(), work_dir(settings, "sync") as path:
            job = UserBackup(settings, store, broker.any_token,
                             GitWork(settings.run, path), stop, broker=broker)
            for login, listing in in_order(lister, logins, settings.github.user_deadline_s):
                yield (job.sync(login, listing) if isinstance(listing, OwnerListing)
                       else UserResult(login, not_done=listing))
    finally:
        lister.close()
        store.close()


def in_order(lister: Lister, logins: Sequence[str], deadline_s: float
             ) -> Iterator[tuple[str, OwnerListing | str]]:
    """Each login with its listing, in the order given, listed as late as the lister allows;
    or, for one whose listing a rate limit stopped past its deadline (`deadline_s` from the
    wait for quota, as in `run`), why it was not listed."""
    ready: dict[str, OwnerListing | str] = {r.login: r for r in lister.submit(logins)}
    for login in logins:
        while login not in ready and lister.queued:
            lister.wait_ready()
            try:
                ready.update((r.login, r) for r in lister.step(time.monotonic() + deadline_s))
            except RateLimited as exc:
                back = lister.take_back()
                ready.update(dict.fromkeys(back.stopped, str(exc)))
                ready.update((r.login, r) for r in lister.submit(back.waiting))
        yield login, ready.pop(login, "not listed")
