"""Passes over the store: restore, verify, stats, show."""
