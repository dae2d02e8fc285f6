"""git: mirrors and bundles, the increment's fetch (dulwich over bounded HTTP), ref
listings, fsck."""
