"""Small inline SVG charts for the UI plugin, drawn on the server (no JavaScript, no build step).

`stacked_bars`: one vertical bar per run, stacked by series (the funnel of each of the last runs, or its drop
reasons); `funnel`: one horizontal bar per stage, the records standing after it. Every bar has a <title>, so a
browser shows the exact number on hover; the text is escaped.
"""

from __future__ import annotations

from html import escape

PALETTE = (
    "#0969da",
    "#bf3989",
    "#d4a72c",
    "#8250df",
    "#1b7c83",
    "#e16f24",
    "#6e7781",
    "#cf222e",
    "#953800",
    "#0550ae",
    "#4d2d00",
    "#a0a8b0",
)  # no green: green is "kept"
KEPT, PENDING, OTHER = "#2da44e", "#d0d7de", "#8c959f"
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def colors(series: list[str], fixed: dict[str, str] | None = None) -> dict[str, str]:
    """A colour per series: the fixed ones, the palette in order for the others."""
    fixed = fixed or {}
    free = iter(c for c in PALETTE if c not in fixed.values())
    return {s: fixed.get(s) or next(free, OTHER) for s in series}


def _ticks(value: float) -> tuple[int, int]:
    """The y axis: a step of 1, 2 or 5 times a power of ten, and how many steps reach `value` (at most 5)."""
    power = 1
    while True:
        for m in (1, 2, 5):
            if m * power * 5 >= value:
                return m * power, max(1, -(-int(value) // (m * power)))
        power *= 10


def stacked_bars(
    title: str,
    bars: list[tuple[str, list[tuple[str, int]]]],
    palette: dict[str, str],
    width: int = 760,
    height: int = 260,
    note: str = "",
) -> str:
    """Vertical bars (label, [(series, value), ...] stacked bottom up), a y axis and a legend of `palette`'s
    series that occur."""
    left, right, top, bottom = 56, 10, 28, 46
    legend_rows = [s for s in palette if any(s == name and v for _, parts in bars for name, v in parts)]
    legend_h = 16 * ((len(legend_rows) + 2) // 3)
    plot_w, plot_h = width - left - right, height - top - bottom
    step, steps = _ticks(max((sum(v for _, v in parts) for _, parts in bars), default=0))
    top_value = step * steps
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + legend_h}" role="img"'
        f' aria-label="{escape(title)}" {FONT}>',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i in range(steps + 1):
        value = step * i
        y = top + plot_h - plot_h * i / steps
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>'
        )
    slot = plot_w / max(len(bars), 1)
    bar_w = min(48, slot * 0.7)
    for i, (label, parts) in enumerate(bars):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for name, value in parts:
            if not value:
                continue
            h = plot_h * value / top_value
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{palette.get(name, OTHER)}">'
                f"<title>{escape(label)}: {escape(name)} {value:,}</title></rect>"
            )
        if not any(v for _, v in parts):
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - 4}" text-anchor="middle" fill="#6e7781">–</text>'
            )
        out.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{escape(label[-14:])}'
            f"<title>{escape(label)}</title></text>"
        )
    if note:
        out.append(f'<text x="{left}" y="{top + plot_h + 32}" fill="#6e7781">{escape(note)}</text>')
    for i, name in enumerate(legend_rows):
        x, y = left + (i % 3) * (plot_w / 3), height + 16 * (i // 3) + 2
        out.append(
            f'<rect x="{x:.1f}" y="{y}" width="10" height="10" fill="{palette[name]}"/>'
            f'<text x="{x + 14:.1f}" y="{y + 9}">{escape(name[:40])}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def funnel(title: str, rows: list[tuple[str, int | None, str]], width: int = 560) -> str:
    """Horizontal bars, one per (label, value, note): the value's length of the first row's; None draws a
    grey pending bar with the note instead of a number."""
    left, bar_h, gap, top = 130, 18, 6, 26
    height = top + len(rows) * (bar_h + gap) + 4
    scale = max((v for _, v, _ in rows if v), default=1)
    plot_w = width - left - 150
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"'
        f' aria-label="{escape(title)}" {FONT}>',
        f'<text x="0" y="16" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i, (label, value, note) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            out.append(
                f'<rect x="{left}" y="{y}" width="{plot_w}" height="{bar_h}" fill="none" stroke="{PENDING}"'
                f' stroke-dasharray="4 3"/><text x="{left + 6}" y="{y + 13}" fill="#6e7781">{escape(note)}</text>'
            )
            continue
        w = max(plot_w * value / scale, 1 if value else 0)
        out.append(
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{KEPT if i == len(rows) - 1 else PALETTE[0]}">'
            f"<title>{escape(label)}: {value:,}</title></rect>"
            f'<text x="{left + w + 6:.1f}" y="{y + 13}">{value:,}{(" " + escape(note)) if note else ""}</text>'
        )
    out.append("</svg>")
    return "".join(out)
