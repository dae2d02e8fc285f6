"""Bar charts as inline SVG, drawn by the server: no script, no external asset.

Only numbers and fixed labels reach the drawing, and every text is escaped anyway. Styling is
by class (the static style sheet), so the page's CSP can forbid inline styles.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 600
HEIGHT = 160
PAD_LEFT = 44
PAD_BOTTOM = 22
PAD_TOP = 8


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value``."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale  # pragma: no cover


def _fmt(value: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= div:
            return f"{value / div:.3g}{unit}"
    return f"{value:.3g}"


def bars(values: Sequence[float], labels: Sequence[str], title: str, css_class: str,
         label_every: int = 1) -> Markup:
    """A bar chart of ``values`` with an x label under every ``label_every``-th bar,
    counted from the last."""
    top = _nice_max(max(values, default=0))
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(values), 1)
    gap = min(step * 0.2, 6)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {escape(css_class)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 4}" '
        f'y2="{PAD_TOP + plot_h}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - frac)
        parts.append(f'<text class="tick" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(_fmt(top * frac))}</text>')
    for i, value in enumerate(values):
        h = plot_h * (max(value, 0) / top)
        x = PAD_LEFT + i * step + gap / 2
        y = PAD_TOP + plot_h - h
        label = labels[i] if i < len(labels) else ""
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{step - gap:.1f}" '
                     f'height="{h:.1f}"><title>{escape(label)}: {escape(_fmt(value))}'
                     "</title></rect>")
        if label and (len(values) - 1 - i) % label_every == 0:
            parts.append(f'<text class="label" x="{x + (step - gap) / 2:.1f}" '
                         f'y="{HEIGHT - 6}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it is escaped above


def users_per_minute(series: Sequence[int]) -> Markup:
    """Users synced per minute over the last hour (the current minute last)."""
    n = len(series)
    labels = [f"-{n - 1 - i}m" if n - 1 - i else "now" for i in range(n)]
    return bars(series, labels, "users synced per minute, last hour", "rate", label_every=10)


FRESHNESS_LABELS = {"never": "never", "lt_1d": "< 1 day", "lt_7d": "< 7 days",
                    "lt_30d": "< 30 days", "older": "older"}


def freshness(buckets: dict[str, int]) -> Markup:
    """Users by the age of their last sync."""
    names = list(FRESHNESS_LABELS)
    return bars([buckets.get(n, 0) for n in names], [FRESHNESS_LABELS[n] for n in names],
                "users by last-sync age", "freshness")
