"""HTTP under the forges' API clients and git's pack fetch: one bounded reader (bounded.py)."""
