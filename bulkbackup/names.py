"""Validation of untrusted names before they become Redis keys or store paths."""

import re

from bulkbackup.errors import InvalidName, UsageError

# Looser than GitHub's rules today (single inner hyphens) so legacy logins such as
# `foo-` or `-Jerry-` are kept; nothing that could act as a path or separator passes.
_LOGIN = re.compile(r"[A-Za-z0-9-]{1,39}")
_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")


def is_login(value: object) -> bool:
    return isinstance(value, str) and _LOGIN.fullmatch(value) is not None


def is_repo_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and _REPO.fullmatch(value) is not None
        and value not in (".", "..")
    )


def check_login(value: object) -> str:
    if not is_login(value):
        raise InvalidName(f"invalid login: {value!r:.60}")
    assert isinstance(value, str)
    return value


def check_logins(logins: list[str]) -> None:
    """Logins named on the command line: the first invalid one is a UsageError (exit 2),
    before anything is read or written."""
    for login in logins:
        try:
            check_login(login)
        except InvalidName as exc:
            raise UsageError(str(exc)) from None


def check_repo_name(value: object) -> str:
    if not is_repo_name(value):
        raise InvalidName(f"invalid repository name: {value!r:.120}")
    assert isinstance(value, str)
    return value
