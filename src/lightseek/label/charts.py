"""The dashboard's charts as inline SVG, drawn on the server: no chart library in the browser and
nothing fetched from a CDN. Every chart also has its numbers in a table beside it."""

from __future__ import annotations

from html import escape

WIDTH, BAR_H, GAP, LABEL_W = 520, 18, 6, 150


def bars(title: str, values: dict[str, float], fmt: str = "{:g}") -> str:
    """Horizontal bars, one per key, longest first as given."""
    if not values:
        return f'<p class="empty">{escape(title)}: nothing yet</p>'
    top = max(max(values.values()), 1e-9)
    height = len(values) * (BAR_H + GAP) + 28
    rows = []
    for i, (name, v) in enumerate(values.items()):
        y = 24 + i * (BAR_H + GAP)
        w = max(1.0, (WIDTH - LABEL_W - 60) * v / top)
        rows.append(f'<text x="{LABEL_W - 6}" y="{y + 13}" text-anchor="end">{escape(str(name))[:28]}</text>'
                    f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" class="bar"/>'
                    f'<text x="{LABEL_W + w + 4:.1f}" y="{y + 13}">{escape(fmt.format(v))}</text>')
    return (f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}"><text x="0" y="14" class="title">{escape(title)}</text>'
            + "".join(rows) + "</svg>")


def line(title: str, points: dict[str, float], lo: float = 0.0, hi: float = 1.0) -> str:
    """A line over ordered keys (days), the y axis from ``lo`` to ``hi``."""
    if not points:
        return f'<p class="empty">{escape(title)}: nothing yet</p>'
    h, left, right, top, bottom = 180, 40, 20, 24, 30
    keys = list(points)
    span = max(len(keys) - 1, 1)
    xy = [(left + (WIDTH - left - right) * i / span,
           top + (h - top - bottom) * (1 - (min(max(points[k], lo), hi) - lo) / (hi - lo))) for i, k in enumerate(keys)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{escape(k)}: {points[k]:.3f}</title></circle>'
                   for (x, y), k in zip(xy, keys))
    axis = (f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{hi:g}</text>'
            f'<text x="{left - 4}" y="{h - bottom + 4}" text-anchor="end">{lo:g}</text>'
            f'<text x="{left}" y="{h - 8}">{escape(keys[0])}</text>'
            f'<text x="{WIDTH - right}" y="{h - 8}" text-anchor="end">{escape(keys[-1])}</text>')
    return (f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{h}" '
            f'viewBox="0 0 {WIDTH} {h}"><text x="0" y="14" class="title">{escape(title)}</text>'
            f'<polyline points="{path}" class="line"/>{dots}{axis}</svg>')


def dashboard(stats: dict) -> dict[str, str]:
    """The project page's charts from `stats.project_stats`."""
    return {
        "status": bars("Items by status", stats["by_status"]),
        "annotators": bars("Annotations per annotator", {a["user"]: a["annotations"] for a in stats["annotators"]}),
        "labels": bars("Label distribution", stats["label_distribution"]),
        "agreement": line("Agreement over time (mean pairwise, per day)", stats["agreement_over_time"]),
    }
