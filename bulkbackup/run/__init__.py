"""The pool of `bulkbackup run`: supervisor, workers, their reports, batching, parent death."""
