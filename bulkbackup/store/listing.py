"""What a store's listing gives: one entry per object, without a request per object."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of a listing: what a listing page gives without a request per object."""

    key: str
    size: int
    last_modified: datetime  # timezone-aware, UTC
