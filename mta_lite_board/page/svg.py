"""page.svg — the history plots as inline SVG: stacked bars per hour or per day (pure).

bar_chart(buckets, label_every, label_format) draws one bar per bucket ({"start": epoch,
"relayed": n, "deferred": n, "bounced": n, "rejected": n}), the kinds stacked in KIND_COLOURS
order, a light grid with the scale's top value, a time label every `label_every` bars (UTC),
and a <title> per bar that a browser shows on hover: no script, no external asset, no font.
Guarantees: the output is well-formed SVG whose only text is numbers, dates and our own
words, each passed through html.escape; any counts (zero, huge) give a sane drawing.
Must never: take a string from a file into the drawing other than through escape.
"""

from __future__ import annotations

import html
import math
import time

# Colours that stay apart for the common colour-vision deficiencies (Okabe–Ito palette).
KIND_COLOURS = (("relayed", "#009e73"), ("deferred", "#e69f00"), ("bounced", "#d55e00"),
                ("rejected", "#999999"))
WIDTH = 720
HEIGHT = 200
LEFT = 44           # room for the scale's numbers
BOTTOM = 22         # room for the time labels
TOP = 10
GAP = 2             # between bars


def nice_top(value: int) -> int:
    """The scale's top: 1, 2, 2.5 or 5 times a power of ten, at least `value` (and at least 1)."""
    top = 1
    while True:
        for step in (1, 2, 2.5, 5):
            if step * top >= value and step * top == int(step * top):
                return int(step * top)
        top *= 10


def bar_chart(buckets: list[dict], label_every: int, label_format: str, title: str) -> str:
    """One plot as an <svg> element (a string)."""
    totals = [sum(_count(b.get(kind)) for kind, _ in KIND_COLOURS) for b in buckets]
    top = nice_top(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(buckets))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<title>{html.escape(title)}</title>']
    parts += _grid(top, plot_w, plot_h)
    for i, bucket in enumerate(buckets):
        x = LEFT + i * step
        parts += _bar(bucket, x, step - GAP, top, plot_h, label_format)
        if i % label_every == 0:
            label = time.strftime(label_format, time.gmtime(_count(bucket.get("start"))))
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 6}" font-size="11" fill="#444">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _grid(top: int, plot_w: float, plot_h: float) -> list[str]:
    base = TOP + plot_h
    out = []
    for fraction in (0.0, 0.5, 1.0):
        y = base - fraction * plot_h
        value = top * fraction
        number = f"{value:.0f}" if value == int(value) else f"{value:.1f}"
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" fill="#444" '
                   f'text-anchor="end">{html.escape(number)}</text>')
    return out


def _bar(bucket: dict, x: float, width: float, top: int, plot_h: float, label_format: str) -> list[str]:
    """The stacked segments of one bucket, bottom up, each with its hover title."""
    when = time.strftime(label_format, time.gmtime(_count(bucket.get("start"))))
    words = ", ".join(f"{_count(bucket.get(kind))} {kind}" for kind, _ in KIND_COLOURS)
    y = TOP + plot_h
    out = [f'<g><title>{html.escape(f"{when} UTC: {words}")}</title>']
    for kind, colour in KIND_COLOURS:
        height = _count(bucket.get(kind)) / top * plot_h
        if height <= 0:
            continue
        y -= height
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(1.0, width):.1f}" height="{height:.1f}" '
                   f'fill="{colour}"><title>{html.escape(f"{when} UTC: {_count(bucket.get(kind))} {kind}")}'
                   f'</title></rect>')
    out.append("</g>")
    return out


def legend() -> str:
    """The colours' key, as HTML (shared by both plots)."""
    items = [f'<span class="key"><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
             f'fill="{colour}"/></svg> {html.escape(kind)}</span>' for kind, colour in KIND_COLOURS]
    return '<p class="legend">' + " ".join(items) + "</p>"


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return max(0, min(int(value), 10 ** 12))
