"""Validation of untrusted names before they become Redis keys or store paths."""

import re

from bulkbackup.errors import InvalidName, UsageError

# Looser than GitHub's rules today (single inner hyphens) so legacy logins such as
# `foo-` or `-Jerry-` are kept; nothing that could act as a path or separator passes.
_LOGIN = re.compile(r"[A-Za-z0-9-]{1,39}")
_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
# GitHub refuses a repository name ending in ".wiki" ("The repository REPO cannot end in
# .wiki"): `<repo>.wiki` is the name the repository's wiki is archived under, so a name with
# that ending is never a repository's (any case: a store may fold it).
WIKI_SUFFIX = ".wiki"
# A user's public gists are archived as `gists/<id>` (store keys `<login>/gists/<id>...`:
# archive/layout.py); a gist's id is GitHub's hex name (old gists: decimal digits, hex too).
GISTS_FOLDER = "gists"
_GIST_ID = re.compile(r"[0-9a-f]{1,64}")


def is_login(value: object) -> bool:
    return isinstance(value, str) and _LOGIN.fullmatch(value) is not None


def is_repo_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and _REPO.fullmatch(value) is not None
        and value not in (".", "..")
        and not value.lower().endswith(WIKI_SUFFIX)
    )


def is_wiki_name(value: object) -> bool:
    """`<repo>.wiki`: the name a repository's wiki is archived under."""
    return (isinstance(value, str) and value.endswith(WIKI_SUFFIX)
            and is_repo_name(value[: -len(WIKI_SUFFIX)]))


def is_gist_id(value: object) -> bool:
    """A gist's id as GitHub names it: lowercase hex, nothing else ever becomes a key."""
    return isinstance(value, str) and _GIST_ID.fullmatch(value) is not None


def is_gist_name(value: object) -> bool:
    """`gists/<id>`: the name a user's gist is archived under."""
    return (isinstance(value, str) and value.startswith(GISTS_FOLDER + "/")
            and is_gist_id(value[len(GISTS_FOLDER) + 1:]))


def is_archive_name(value: object) -> bool:
    """A repository's name, its wiki's or a gist's (each has a bundle of its own)."""
    return is_repo_name(value) or is_wiki_name(value) or is_gist_name(value)


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


def check_archive_name(value: object) -> str:
    """A repository's, a wiki's (`<repo>.wiki`) or a gist's (`gists/<id>`) name, as restore
    and verify take them."""
    if not is_archive_name(value):
        raise InvalidName(f"invalid repository name: {value!r:.120}")
    assert isinstance(value, str)
    return value


MAX_SEGMENT_BYTES = 200  # a release tag or asset name as one store key segment (UTF-8)


def is_key_segment(value: object) -> bool:
    """A name from the API (a release's tag, an asset's name) usable as one segment of a
    store key and of a path `restore` writes: printable text (no control, format or line
    separator character), no `/`, `\\` or `%` (the local store spells `%` as three bytes:
    the file name would outgrow the bound), not `.` or `..`, no space at either end, at most
    MAX_SEGMENT_BYTES."""
    return (isinstance(value, str) and value not in ("", ".", "..")
            and len(value.encode("utf-8", "surrogatepass")) <= MAX_SEGMENT_BYTES
            and value.isprintable() and not any(c in value for c in "/\\%")
            and value == value.strip())


def check_key_segment(value: object, what: str) -> str:
    if not is_key_segment(value):
        raise InvalidName(f"invalid {what}: {value!r:.120}")
    assert isinstance(value, str)
    return value
