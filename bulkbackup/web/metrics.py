"""`/metrics`: the dashboard's figures in Prometheus text format, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bulkbackup.web import data

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ArchiveCollector(Collector):
    def __init__(self, backend: data.Backend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = data.stats(self.backend.r, self.backend.settings.events.full_pass_days)
        users = GaugeMetricFamily("bulkbackup_users", "Tracked users by status", labels=["status"])
        for name in ("tracked", "never_synced", "due", "claimed", "synced"):
            users.add_metric([name], getattr(s, name))
        if s.errors is not None:
            users.add_metric(["errors"], s.errors)
        yield users
        fresh = GaugeMetricFamily("bulkbackup_freshness_users",
                                  "Users by the age of their last sync", labels=["age"])
        for name, n in s.freshness.items():
            fresh.add_metric([name], n)
        yield fresh
        rates = GaugeMetricFamily("bulkbackup_rate_per_minute",
                                  "Synced users, archived repositories and bytes per minute",
                                  labels=["what", "window"])
        for window, figures in s.rates.items():
            for what, value in figures.items():
                rates.add_metric([what, window], value)
        yield rates
        workers = data.workers(self.backend.r)
        yield GaugeMetricFamily("bulkbackup_workers_active",
                                "Worker processes seen in the last minute (a remote worker "
                                "token's processes count as one)", value=len(workers))
        remote = GaugeMetricFamily("bulkbackup_remote_worker_rate_per_minute",
                                   "Remote workers by token: users, repos, bytes per minute",
                                   labels=["token", "what"])
        for w in workers:
            if w.token:
                for what in ("users", "repos", "bytes"):
                    remote.add_metric([w.token, what], getattr(w, f"{what}_per_min"))
        yield remote
        if s.repos is not None:
            yield GaugeMetricFamily("bulkbackup_last_stats_repositories",
                                    "Archived repositories at the last stats pass", value=s.repos)
        if s.bytes is not None:
            yield GaugeMetricFamily("bulkbackup_last_stats_bytes",
                                    "Archive bytes at the last stats pass", value=s.bytes)
        if s.more_than_git:
            kinds = GaugeMetricFamily("bulkbackup_last_stats_more_than_git",
                                      "Wikis, gists, LFS objects, release lists and assets "
                                      "archived at the last stats pass", labels=["kind"])
            for kind, n in s.more_than_git.items():
                kinds.add_metric([kind], n)
            yield kinds
        if s.stats_at is not None:
            yield GaugeMetricFamily("bulkbackup_last_stats_timestamp_seconds",
                                    "When the last stats pass ended", value=s.stats_at)
        for name in ("users", "repos", "bytes", "errors"):
            figure = s.last_run.get(name)
            if isinstance(figure, int):
                yield GaugeMetricFamily(f"bulkbackup_last_run_{name}",
                                        f"{name} of the last run", value=figure)
        yield from _events(s.events)


def _events(ev: data.EventsFigures) -> Iterator[GaugeMetricFamily]:
    """Where `bulkbackup events` stands; the last hour and the lag only once one is read."""
    if ev.last_hour_start_s is not None and ev.lag_s is not None:
        yield GaugeMetricFamily("bulkbackup_events_last_hour_timestamp_seconds",
                                "Start of the newest GH Archive hour read whole",
                                value=ev.last_hour_start_s)
        yield GaugeMetricFamily("bulkbackup_events_lag_seconds",
                                "Now minus the end of the newest GH Archive hour read",
                                value=ev.lag_s)
    # Totals kept in Redis since the first hour: gauges (a restart of serve resets nothing,
    # and FLUSHALL would make a counter go down).
    for name, what in (("hours", "Hours read whole"), ("gaps", "Hours skipped as missing"),
                       ("events", "Event lines read"), ("marks", "Changes that marked an owner"),
                       ("bad_lines", "Lines that were not a valid event")):
        yield GaugeMetricFamily(f"bulkbackup_events_{name}", what, value=getattr(ev, name))
    users = GaugeMetricFamily("bulkbackup_events_marked_users",
                              "Owners marked by events and not synced yet", labels=["needs"])
    users.add_metric(["any"], ev.marked_due)
    users.add_metric(["listing"], ev.needs_listing)
    yield users


def registry(backend: data.Backend) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ArchiveCollector(backend))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
