"""Listing a forge's users: GitHub REST and GraphQL, the listing feed, the quota broker,
bounded HTTP."""
