"""The one way every command reaches Redis: the client, the server's clock, the Lua scripts."""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

import redis

from bulkbackup.config import RedisSettings
from bulkbackup.errors import ConfigError, one_line

SCHEMES = ("redis", "rediss", "unix")


def connect(settings: RedisSettings, decode: bool = True) -> redis.Redis:
    """A client for ``settings.url``; each process builds its own. A URL redis-py cannot use
    is a ConfigError (exit 2), whichever command meets it first."""
    scheme = urlsplit(settings.url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(f"invalid redis.url: {settings.url!r}: the scheme must be one of "
                          f"{', '.join(s + '://' for s in SCHEMES)}")
    try:
        return redis.Redis.from_url(
            settings.url,
            decode_responses=decode,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=min(settings.socket_timeout_s, 10.0),
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid redis.url: {one_line(exc)}") from None


def server_time(r: redis.Redis) -> float:
    """Redis's clock in seconds: leases and scores are in server time, shared by all hosts."""
    sec, usec = r.time()
    return float(sec) + usec / 1e6


def lua_text(name: str) -> str:
    """The text of lua/<name> (every script of the project is a file there)."""
    return resources.files("bulkbackup").joinpath("lua", name).read_text(encoding="utf-8")


class Scripts:
    """The project's Lua scripts, registered on one client (EVALSHA, loaded on demand)."""

    def __init__(self, r: redis.Redis) -> None:
        # A user's marks are taken by a claim and given back or dropped by its completion:
        # one Lua library (marks.lua) prepended to both.
        marks = lua_text("marks.lua")
        self.claim = r.register_script(marks + lua_text("claim.lua"))
        self.refresh = r.register_script(lua_text("refresh.lua"))
        self.complete = r.register_script(marks + lua_text("complete.lua"))
        self.track = r.register_script(lua_text("track.lua"))
        self.events_mark = r.register_script(lua_text("events_mark.lua"))
        self.events_hour = r.register_script(lua_text("events_hour.lua"))
        self.listing_take = r.register_script(lua_text("listing_take.lua"))
