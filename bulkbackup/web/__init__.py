"""`bulkbackup serve`: the archive's web face (status, search, downloads, rates, metrics)."""
