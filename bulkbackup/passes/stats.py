"""The passes over the whole store: `stats` (counts, SyncdRepos) and `rebuild` (`tracked`).

Both cost listing pages, not a request per object: the store is walked once with a flat
listing (no delimiter: Storj returns delimited listings in encrypted-path order), in memory
bounded by the number of users whose keys can interleave in byte order (logins that are
prefixes of each other, at most ~39 deep), never by the number of users.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import redis

from bulkbackup.archive import layout
from bulkbackup.archive.layout import EMPTY_REPOSITORY, UserCounts, short_reason
from bulkbackup.archive.metadata import ERROR, REPORTED_REPOS, SYNCD_REPOS
from bulkbackup.config import Settings
from bulkbackup.names import is_login, is_wiki_name
from bulkbackup.progress import Progress
from bulkbackup.queue import events as queue_events
from bulkbackup.queue import keys, tracked
from bulkbackup.queue.connection import connect
from bulkbackup.store import Store, open_store
from bulkbackup.store.listing import ObjectInfo
from bulkbackup.timeutil import format_rfc3339

HSCAN_BATCH = 500
DAY_S = 86_400


@dataclass
class UserKeys:
    """What one user's keys in a listing say."""

    login: str
    has_object: bool = False
    last_modified: float = 0.0
    with_data: int = 0
    zero: list[str] = field(default_factory=list)  # keys of zero-byte bundles
    bundle_bytes: int = 0
    zip_bytes: int = 0
    part_bytes: int = 0  # increments and kept chains (README "Incremental archives")
    wikis: int = 0  # wiki bundles with data (not repositories: not in SyncdRepos)
    gists: int = 0  # gist bundles with data (not repositories either)
    lfs_objects: int = 0
    lfs_bytes: int = 0
    release_lists: int = 0  # `<repo>.releases.json` objects
    assets: int = 0  # release assets stored (zero-byte markers of the others not counted)
    asset_bytes: int = 0


@dataclass
class Totals:
    users_in_store: int = 0
    users_with_errors: int = 0
    archived: int = 0
    failed: int = 0
    empty: int = 0
    bundle_bytes: int = 0
    zip_bytes: int = 0
    part_bytes: int = 0
    wikis: int = 0
    gists: int = 0
    lfs_objects: int = 0
    lfs_bytes: int = 0
    release_lists: int = 0
    assets: int = 0
    asset_bytes: int = 0
    written: int = 0
    store_requests: int = 0
    elapsed_s: float = 0.0


def group_by_user(listing: Iterator[ObjectInfo], byte_ordered: bool) -> Iterator[UserKeys]:
    """Fold a flat listing into one UserKeys per user, each yielded once it is complete."""
    open_users: dict[str, UserKeys] = {}
    for info in listing:
        key = layout.parse_key(info.key)
        login = key.login
        if byte_ordered:
            # In byte order `a`, `a-b`, `a-b/x`, `a/x`: user `a` is done only after `a/`.
            for done in [u for u in open_users if info.key > layout.user_prefix(u) and
                         not layout.is_below(info.key, u)]:
                yield open_users.pop(done)
        else:
            for done in [u for u in open_users if u != login]:
                yield open_users.pop(done)
        if not is_login(login):
            continue
        user = open_users.setdefault(login, UserKeys(login))
        if key.kind is layout.Kind.USER:
            user.has_object = True
            user.last_modified = info.last_modified.timestamp()
        elif key.kind is layout.Kind.BUNDLE and is_wiki_name(key.repo):
            user.wikis += 1 if info.size > 0 else 0
            user.bundle_bytes += info.size
        elif key.kind is layout.Kind.BUNDLE and layout.gist_of(key.repo) is not None:
            user.gists += 1 if info.size > 0 else 0
            user.bundle_bytes += info.size
        elif key.kind is layout.Kind.LFS:
            user.lfs_objects += 1
            user.lfs_bytes += info.size
        elif key.kind is layout.Kind.RELEASES:
            user.release_lists += 1
        elif key.kind is layout.Kind.ASSET:
            user.assets += 1 if info.size > 0 else 0
            user.asset_bytes += info.size
        elif key.kind is layout.Kind.BUNDLE:
            if info.size > 0:
                user.with_data += 1
                user.bundle_bytes += info.size
            else:
                user.zero.append(info.key)
        elif key.kind is layout.Kind.ZIP:
            user.zip_bytes += info.size
        elif key.kind is layout.Kind.PART:
            user.part_bytes += info.size
    yield from open_users.values()


class StatsPass:
    def __init__(self, settings: Settings, r: redis.Redis, store: Store, write: bool) -> None:
        self.settings = settings
        self.r = r
        self.store = store
        self.write = write
        self.totals = Totals()
        self._pending: dict[str, str] = {}

    def run(self, progress: bool = True) -> Totals:
        started = time.monotonic()
        bar = Progress(total=self.r.zcard(keys.TRACKED) or None, unit="user", desc="stats",
                       enabled=progress)
        try:
            batch: list[UserKeys] = []
            for user in group_by_user(self.store.list(""), self.store.byte_ordered):
                batch.append(user)
                if len(batch) >= HSCAN_BATCH:
                    self._users(batch)
                    bar.update(len(batch))
                    batch = []
            self._users(batch)
            bar.update(len(batch))
            self._flush_cache()
        finally:
            bar.close()
        self.totals.store_requests = self.store.request_count
        self.totals.elapsed_s = time.monotonic() - started
        return self.totals

    def _users(self, users: list[UserKeys]) -> None:
        """One HMGET for the cached counts of a batch of users; the store only when needed."""
        if not users:
            return
        cached = self.r.hmget(keys.SYNCD, [u.login for u in users])
        for user, text in zip(users, cached, strict=True):
            self._user(user, UserCounts.decode(None if text is None else str(text)))

    def _user(self, user: UserKeys, cached: UserCounts | None) -> None:
        t = self.totals
        t.bundle_bytes += user.bundle_bytes
        t.zip_bytes += user.zip_bytes
        t.part_bytes += user.part_bytes
        t.archived += user.with_data
        t.wikis += user.wikis
        t.gists += user.gists
        t.lfs_objects += user.lfs_objects
        t.lfs_bytes += user.lfs_bytes
        t.release_lists += user.release_lists
        t.assets += user.assets
        t.asset_bytes += user.asset_bytes
        if not user.has_object:
            # Archives without the user's object (a sync that died midway): count them only.
            t.failed += len(user.zero)
            return
        t.users_in_store += 1
        counts = cached
        if counts is None or counts.syncd != user.with_data or (
                counts.empty + counts.failed != len(user.zero)) or (
                counts.error and counts.reason is None):  # an older summary: no reason
            counts = self._from_store(user, cached)
        t.empty += counts.empty
        t.failed += counts.failed
        t.users_with_errors += counts.error

    def _from_store(self, user: UserKeys, cached: UserCounts | None) -> UserCounts:
        """The cache is missing or disagrees with the listing: the store is the truth."""
        head = self.store.head(layout.user_key(user.login))
        empty = 0
        if cached is not None and cached.empty + cached.failed == len(user.zero):
            empty = cached.empty
        else:
            for key in user.zero:
                bundle = self.store.head(key)
                empty += bundle is not None and bundle.get(ERROR) == EMPTY_REPOSITORY
        reported = head.get(REPORTED_REPOS) if head is not None else ""
        error = head.get(ERROR) if head is not None else ""
        counts = UserCounts(user.with_data, empty, len(user.zero) - empty, bool(error),
                            int(reported) if reported.isdigit() else 0,
                            short_reason(error) if error else None)
        if head is not None and head.get(SYNCD_REPOS) != str(user.with_data):
            if self.write:
                self.store.replace_metadata(layout.user_key(user.login), layout.updated_metadata(
                    head, {SYNCD_REPOS: str(user.with_data)}))
                self.totals.written += 1
            else:
                return counts  # nothing written: the cache must not claim it was
        self._pending[user.login] = counts.encode()
        if len(self._pending) >= HSCAN_BATCH:
            self._flush_cache()
        return counts

    def _flush_cache(self) -> None:
        if self._pending and self.write:
            self.r.hset(keys.SYNCD, mapping=dict(self._pending))  # type: ignore[arg-type]
        self._pending.clear()


def collect(settings: Settings, write: bool, progress: bool = True) -> dict[str, object]:
    """Run the stats pass; the figures as one JSON-ready mapping.

    ``write=False`` writes nothing at all: no SyncdRepos, no cached counts, no
    `bulkbackup:laststats`, and no bucket is created.
    """
    r = connect(settings.redis)
    store = open_store(settings.store, create=write)
    try:
        totals = StatsPass(settings, r, store, write).run(progress)
    finally:
        store.close()
    now = time.time()
    users = tracked.counts(r)
    last_run = {str(k): str(v) for k, v in r.hgetall(keys.LAST_RUN).items()}
    report: dict[str, object] = {
        "users": {
            "tracked": users["tracked"],
            "in_store": totals.users_in_store,
            "synced": users["tracked"] - users["never_synced"],
            "never_synced": users["never_synced"],
            "due": _due(r, last_run, now, settings.events.full_pass_days),
            "claimed_now": users["claimed"],
            "with_errors": totals.users_with_errors,
        },
        "repositories": {"archived": totals.archived, "failed": totals.failed,
                         "empty": totals.empty},
        "more_than_git": {"wikis": totals.wikis, "gists": totals.gists,
                          "lfs_objects": totals.lfs_objects, "lfs_bytes": totals.lfs_bytes,
                          "release_lists": totals.release_lists,
                          "assets": totals.assets, "asset_bytes": totals.asset_bytes},
        "bytes": {"bundles": totals.bundle_bytes, "zips": totals.zip_bytes,
                  "increments": totals.part_bytes},
        "last_run": {
            "ended_at": _iso(last_run.get("ended_at", "")),
            "users": int(last_run.get("users", 0)),
            "users_per_s": float(last_run.get("users_per_s", 0.0)),
        },
        "verify": _last_verify(r),
        "events": queue_events.figures(r, now),
        "pass": {"syncd_repos_written": totals.written, "store_requests": totals.store_requests,
                 "elapsed_s": round(totals.elapsed_s, 3), "wrote": write},
    }
    if write:
        r.hset(keys.LAST_STATS, mapping={"at": int(now), "json": orjson.dumps(report)})
    return report


def _last_verify(r: redis.Redis) -> dict[str, object]:
    """The last verify pass's figures, as `verify` kept them (bulkbackup:lastverify): the
    listing does not carry VerifiedAt, and a HEAD per archive would cost a request each."""
    last = {str(k): str(v) for k, v in r.hgetall(keys.LAST_VERIFY).items()}

    def num(name: str) -> int:
        return int(last.get(name, "0") or 0)

    return {"ended_at": _iso(last.get("at", "")), "users": num("users"),
            "archives": num("archives"), "verified": num("verified"), "failed": num("failed"),
            "no_archive": num("no_archive"), "verified_total": num("verified_total"),
            "failed_total": num("failed_total")}


def _due(r: redis.Redis, last_run: dict[str, str], now_s: float, full_pass_days: float) -> int:
    """Users the next run must do first. Before any events hour is read: never synced, or not
    synced since the last run began. Once events are read (queue/claims.py's rule for a run
    starting now): not listed in full for ``full_pass_days`` (the never synced among them),
    plus the owners marked by events; a marked user also listed too long ago counts twice
    (as in Claimer.remaining). One round trip, O(log N)."""
    since = float(last_run.get("started_at", 0) or 0)
    pipe = r.pipeline(transaction=False)
    pipe.exists(keys.EVENTS_STATUS)
    pipe.zcount(keys.TRACKED, "-inf", f"({since!r}" if since else "-inf")
    pipe.zcount(keys.TRACKED, "-inf", f"({now_s - full_pass_days * DAY_S!r}")
    pipe.zcard(keys.EVENTS_DUE)
    events, below_start, unlisted, marked = pipe.execute()
    return int(unlisted) + int(marked) if int(events) else int(below_start)


def _iso(epoch: str) -> str | None:
    return format_rfc3339(datetime.fromtimestamp(float(epoch), UTC)) if epoch else None


def rebuild(settings: Settings, r: redis.Redis | None = None, store: Store | None = None,
            progress: bool = True) -> int:
    """Every user in the store becomes a member of `tracked`, scored with its last sync (the
    listing's last-modified time of its object, written together with LastSync). A higher
    score already in `tracked` is kept (ZADD GT); members only in Redis stay. Then every
    member goes to serve's search index, marked whole (tracked.index_for_search).

    Costs listing pages of the top level only. Returns how many members were new.
    """
    r = r or connect(settings.redis)
    own = store is None
    store = store or open_store(settings.store)
    bar = Progress(total=None, unit="user", desc="rebuild", enabled=progress)

    def scores() -> Iterator[tuple[str, float]]:
        for info in store.list_top():
            login = layout.parse_key(info.key).login
            if is_login(login):
                bar.update(1)
                yield keys.member(login), info.last_modified.timestamp()

    try:
        added = tracked.add_scores_gt(r, scores())
        tracked.index_for_search(r)  # the members only Redis had, and the index marked whole
        return added
    finally:
        bar.close()
        if own:
            store.close()
