"""Listing a forge's users: the seam (listing: RepoInfo, OwnerListing, the Lister protocol),
GitHub REST and GraphQL listers, the listing feed, the quota broker, bounded HTTP."""
