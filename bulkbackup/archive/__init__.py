"""The archive format: chains of parts, reading a stored archive, increments and their proof."""
