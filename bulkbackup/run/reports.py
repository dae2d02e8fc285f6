"""What a `run` worker tells its parent: typed reports through its pipe, and its exit code."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias


class WorkerExit(IntEnum):
    """A worker's exit code, as the parent reads it."""

    OK = 0
    STOPPED = 1  # the parent's "stop at once" (SIGUSR1): git killed, users left to expire
    FATAL = 3  # cannot work at all (Redis unreachable, store unusable): not restarted
    ORPHANED = 4  # the parent died: users given back


# Reports a worker sends its parent, one per user it is done with (or one Failed at the end).
@dataclass(frozen=True)
class Synced:
    index: int
    login: str
    repos: int
    archived: int
    bytes: int
    error: bool


@dataclass(frozen=True)
class Lost:
    """The user's lock was not ours any more: someone else has it, or it expired."""

    index: int
    login: str


@dataclass(frozen=True)
class GivenBack:
    index: int
    login: str


@dataclass(frozen=True)
class Deferred:
    """Failed run.max_attempts times in a row: left for the next run."""

    index: int
    login: str


@dataclass(frozen=True)
class Failed:
    """The worker gives up (e.g. Redis unreachable); it exits with WorkerExit.FATAL.
    `exit_code`: the error's (2: configuration, e.g. a token GitHub refuses)."""

    index: int
    message: str
    exit_code: int = 1


Report: TypeAlias = Synced | Lost | GivenBack | Deferred | Failed
