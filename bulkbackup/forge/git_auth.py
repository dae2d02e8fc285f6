"""GitHub's side of git's authentication: the `GitAuth` git/ fetches with."""

from __future__ import annotations

from urllib.parse import urlsplit

from bulkbackup.config import GitHubSettings
from bulkbackup.git.auth import GitAuth


def git_auth(gh: GitHubSettings, token: str | None) -> GitAuth:
    """``token`` for git on GitHub: sent only to github.clone_host (the host clone URLs must
    name), over https (plain http too with github.allow_http_token), as GitHub's
    `x-access-token` Basic user; none at all without github.token_for_git."""
    return GitAuth(host=gh.clone_host, token=token if gh.token_for_git else None,
                   schemes=("https", "http") if gh.allow_http_token else ("https",),
                   user="x-access-token")


def gist_auth(gh: GitHubSettings, token: str | None) -> GitAuth:
    """The same rules for gists' git host (github.gist_base's): the token only there."""
    return GitAuth(host=urlsplit(gh.gist_base).netloc.lower(),
                   token=token if gh.token_for_git else None,
                   schemes=("https", "http") if gh.allow_http_token else ("https",),
                   user="x-access-token")
