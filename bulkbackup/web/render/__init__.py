"""Server-side pictures (inline SVG)."""
