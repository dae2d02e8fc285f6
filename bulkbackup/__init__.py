"""bulkbackup: back up the public repositories of millions of GitHub users."""

__version__ = "0.1.0"
