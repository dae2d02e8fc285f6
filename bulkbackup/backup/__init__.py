"""One user's backup: list, fetch, write; its results."""
