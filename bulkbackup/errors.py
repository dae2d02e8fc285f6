"""Every exception bulkbackup raises on purpose derives from BulkbackupError.

The CLI turns a BulkbackupError into one line on stderr and its ``exit_code``;
anything else is a bug and keeps its traceback.
"""

import re

# Characters a terminal acts on rather than shows: C0 and C1 controls, DEL, and the
# invisible or direction-changing format characters (a line could pretend to say otherwise).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069"
                      "\ufeff]")

# SIGINT (Ctrl-C) or SIGTERM stopped a command before it finished its work (128 + SIGINT, the
# shell's convention): `sync`, `run` and the others alike.
EXIT_INTERRUPTED = 130


class BulkbackupError(Exception):
    """Base class: a failure with a message fit for an operator."""

    exit_code = 1


class ConfigError(BulkbackupError):
    """The configuration file or environment is wrong."""

    exit_code = 2


class TokenRefused(ConfigError):
    """GitHub refused a token (401, or a 403 that is not a rate limit): every request with it
    would be refused alike, so it is no user's failure; the command stops (exit 2). The
    message names the token's position, never its value."""


class UsageError(BulkbackupError):
    """The command line is wrong."""

    exit_code = 2


class InvalidName(BulkbackupError):
    """A login or repository name that must not become a key or a path."""


class StoreError(BulkbackupError):
    """The durable store failed or refused an operation."""


class NotFound(StoreError):
    """The object does not exist in the store."""


class GitHubError(BulkbackupError):
    """The GitHub API failed for good (after retries)."""


class UserGone(GitHubError):
    """The API answered 404 for the user."""


class RateLimited(BulkbackupError):
    """Every token is rate limited past this user's deadline (github.user_deadline_s).

    Not a GitHubError on purpose: a rate limit never marks a user failed, so it is not
    recorded as the user's Error; the caller gives the user back for a later attempt.
    ``until`` is the unix time at which the earliest token resets.
    """

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until


class GitError(BulkbackupError):
    """A git command failed or timed out."""


class RemoteNotFound(GitError):
    """The git host answered 404 for the repository (a wiki never created: no wiki)."""


class LockLost(BulkbackupError):
    """The lock on a user is no longer ours: stop working on that user, write nothing."""


class Interrupted(BulkbackupError):
    """The run is stopping (signal): give the user back instead of finishing it."""


class ArchiveError(BulkbackupError):
    """An archive in the store cannot be restored, or failed verification."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``exc``'s message as one line for an operator: every line joined (a reason often sits
    on the second line, as in botocore's "Parameter validation failed:"), bounded."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """``text`` with every control or invisible character escaped (`\\x1b`, `\\u202e`), so
    that untrusted text (a stored bundle's ref names, git's messages about them, stored
    `Error` metadata) can reach a terminal or the store's metadata as it is, and only so."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                        else f"\\u{ord(m[0]):04x}", text)
