"""The lister `github.api` names: GitHub GraphQL (the default) or REST, through one quota
broker (forge/quota_broker.py)."""

from __future__ import annotations

import threading

from bulkbackup.config import GitHubSettings
from bulkbackup.forge.github_graphql import GraphQLLister
from bulkbackup.forge.github_rest import GitHub, RestLister
from bulkbackup.forge.listing import Conditions, Lister, no_conditions
from bulkbackup.forge.quota_broker import QuotaBroker


def open_github_lister(settings: GitHubSettings, broker: QuotaBroker, stop: threading.Event,
                       conditions: Conditions = no_conditions, gists: bool = False) -> Lister:
    """`conditions`: the ETags REST sends (GraphQL lists in full, without them); `gists`:
    the owners' public gists are listed too (run.gists)."""
    if settings.api == "graphql":
        return GraphQLLister(settings, broker, stop, gists=gists)
    return RestLister(GitHub(settings, stop=stop, broker=broker), conditions, gists)
