"""Worker tokens (DESIGN.md "Remote workers"): what a remote worker shows `serve`'s lease API.

A token is 32 random bytes (URL-safe base64), printed once by `worker-token add`; Redis keeps
only its sha256 (`keys.WORKER_TOKENS`: name -> JSON {hash, created, last_used}) and an index
hash -> name (`keys.WORKER_TOKEN_HASHES`) that each request looks up in one HGET. A token is
long and random, so a fast hash is enough: nothing to guess from it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import orjson
import redis

from bulkbackup.errors import UsageError
from bulkbackup.queue import keys

# A name is part of the leases' worker id (`<rand>.<name>.remote`) and of Redis key names:
# no dots, no spaces.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
TOKEN_BYTES = 32
# A presented token longer than this is not one of ours (and is not hashed).
TOKEN_MAX_CHARS = 200


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created: float
    last_used: float | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsageError(f"invalid worker token name {name[:80]!r}: letters, digits, - and _ "
                         "(at most 64, starting with a letter or digit)")
    return name


def add(r: redis.Redis, name: str) -> str:
    """A new token named ``name`` (refused when the name is taken); returned once, kept only
    as its hash."""
    check_name(name)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    digest = token_hash(token)
    doc = orjson.dumps({"hash": digest, "created": int(time.time()), "last_used": None})
    if not r.hsetnx(keys.WORKER_TOKENS, name, doc):
        raise UsageError(f"a worker token named {name!r} exists (revoke it first)")
    r.hset(keys.WORKER_TOKEN_HASHES, digest, name)
    return token


def _info(name: str, raw: object) -> TokenInfo | None:
    try:
        doc = orjson.loads(raw) if isinstance(raw, str | bytes) else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return None
    created, used = doc.get("created"), doc.get("last_used")
    return TokenInfo(name, float(created) if isinstance(created, int | float) else 0.0,
                     float(used) if isinstance(used, int | float) else None)


def list_tokens(r: redis.Redis) -> list[TokenInfo]:
    """Every token's name, creation and last use, by name (never a token, nor its hash)."""
    out = []
    for name, raw in sorted(r.hgetall(keys.WORKER_TOKENS).items()):
        text = name.decode() if isinstance(name, bytes) else str(name)
        info = _info(text, raw)
        if info is not None:
            out.append(info)
    return out


def lookup(r: redis.Redis, token: str) -> str | None:
    """The name of ``token``, or None (unknown, revoked, or not a token at all)."""
    if not token or len(token) > TOKEN_MAX_CHARS:
        return None
    name = r.hget(keys.WORKER_TOKEN_HASHES, token_hash(token))
    if name is None:
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def touch(r: redis.Redis, name: str, when: float) -> None:
    """Record ``name``'s last use (the caller does so at most once a minute per token). A
    revoke at the same moment wins: the entry is written only while it exists (WATCH)."""
    with r.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.WORKER_TOKENS)  # type: ignore[no-untyped-call]
            raw = pipe.hget(keys.WORKER_TOKENS, name)
            doc = orjson.loads(raw) if raw is not None else None
            if not isinstance(doc, dict):
                return
            doc["last_used"] = int(when)
            pipe.multi()
            pipe.hset(keys.WORKER_TOKENS, name, orjson.dumps(doc))
            pipe.execute()
        except (redis.WatchError, orjson.JSONDecodeError):
            pass  # changed meanwhile (another touch, a revoke): this use is not recorded


def remove(r: redis.Redis, name: str) -> bool:
    """Forget ``name``'s token (its next request is refused); False when there was none."""
    raw = r.hget(keys.WORKER_TOKENS, name)
    if raw is None:
        return False
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = {}
    pipe = r.pipeline(transaction=True)
    pipe.hdel(keys.WORKER_TOKENS, name)
    if isinstance(doc, dict) and isinstance(doc.get("hash"), str):
        pipe.hdel(keys.WORKER_TOKEN_HASHES, doc["hash"])
    pipe.execute()
    # Any other hash pointing at this name (a damaged entry) goes too.
    stale = [h for h, n in r.hgetall(keys.WORKER_TOKEN_HASHES).items()
             if (n.decode() if isinstance(n, bytes) else n) == name]
    if stale:
        r.hdel(keys.WORKER_TOKEN_HASHES, *stale)
    return True
