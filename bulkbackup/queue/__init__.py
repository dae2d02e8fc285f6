"""Redis: the connection, keys, the `tracked` set, locks, ingest, the verify queue."""
