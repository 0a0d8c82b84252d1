"""A small SVG line and scatter chart writer for self-contained HTML reports (no plotting library, no script).

Axes are linear, or logarithmic in x (``log_x``) for values that span decades. A chart made with ``band_rows``
keeps that many rows of room between its title and its frame for the labels of marks at the top
(``vline(..., top=True)``), each placed in the first row where it overlaps no other label; labels beside
points (``point_label``) move above or below the point to keep clear of the previous one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
SLO_COLOR = "#c0392b"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    value = start
    while value <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(value, 12))
        value += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times each power of ten in [lo, hi] (only the powers themselves across many decades)."""
    if lo <= 0 or hi <= lo:
        return [lo]
    ticks: list[float] = []
    decades = math.log10(hi) - math.log10(lo)
    steps = (1.0,) if decades > 4 else (1.0, 2.0, 5.0)
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in steps:
            value = m * 10.0 ** exp
            if lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9):
                ticks.append(float(f"{value:.12g}"))
    return ticks or [lo]


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


class Chart:
    """One chart: data coordinates mapped into a plot area with axes, ticks and a legend."""

    def __init__(self, title: str, x_label: str, y_label: str, x_range: tuple[float, float],
                 y_range: tuple[float, float], width: int = 560, height: int = 300, *, log_x: bool = False,
                 band_rows: int = 0, legend_corner: str = "top-left") -> None:
        self.title = title
        self.x_label = x_label
        self.y_label = y_label
        x0, x1 = x_range
        y0, y1 = y_range
        self.log_x = log_x and x0 > 0
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 * 10 if self.log_x else x0 + 1.0)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1.0)
        self.width = width
        self.height = height
        self.band_rows = band_rows
        self.legend_corner = legend_corner   # "top-left", or "bottom-right" (clear of rising curves)
        self.left, self.right, self.top, self.bottom = 62, 16, 28 + 12 * band_rows, 44
        self.parts: list[str] = []
        self.legend: list[tuple[str, str, bool]] = []
        self.band: list[tuple[float, str, str]] = []        # labels of marks at the top: (x px, text, color)
        self._last_point_label: tuple[float, float, bool] | None = None

    def _xfrac(self, x: float) -> float:
        x = min(max(x, self.x0), self.x1)
        if self.log_x:
            return (math.log10(max(x, self.x0)) - math.log10(self.x0)) / (math.log10(self.x1) - math.log10(self.x0))
        return (x - self.x0) / (self.x1 - self.x0)

    def px(self, x: float) -> float:
        w = self.width - self.left - self.right
        return self.left + self._xfrac(x) * w

    def py(self, y: float) -> float:
        h = self.height - self.top - self.bottom
        return self.top + h - (min(max(y, self.y0), self.y1) - self.y0) / (self.y1 - self.y0) * h

    def line(self, points: Sequence[tuple[float, float]], color: str, label: str = "", width: float = 1.8,
             dash: str = "", markers: bool = False) -> None:
        if not points:
            return
        path = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in points)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash_attr} '
                          f'points="{path}"/>')
        if markers:
            for x, y in points:
                self.parts.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="3.5" fill="{color}"/>')
        if label:
            self.legend.append((label, color, bool(dash)))

    def scatter(self, points: Sequence[tuple[float, float]], color: str, label: str = "", radius: float = 1.6,
                opacity: float = 0.5) -> None:
        dots = "".join(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="{radius}"/>' for x, y in points)
        self.parts.append(f'<g fill="{color}" fill-opacity="{opacity}">{dots}</g>')
        if label:
            self.legend.append((label, color, False))

    def vline(self, x: float, label: str, color: str = SLO_COLOR, dash: str = "5,4", top: bool = False) -> None:
        span = self.x1 - self.x0
        if not self.x0 - 0.02 * span <= x <= self.x1:
            self.legend.append((f"{label} (off the chart)", color, True))
            return
        xp = self.px(x)
        self.parts.append(f'<line x1="{xp:.1f}" x2="{xp:.1f}" y1="{self.top}" y2="{self.height - self.bottom}" '
                          f'stroke="{color}" stroke-width="1.2" stroke-dasharray="{dash}"/>')
        if top and self.band_rows:
            self.band.append((xp, label, color))
            return
        right = xp > self.left + 0.6 * (self.width - self.left - self.right)
        tx, anchor = (xp - 3, "end") if right else (xp + 3, "start")
        ty = self.top - 3 if top else self.height - self.bottom - 6  # above the frame: clear of the legend
        self.parts.append(f'<text x="{tx:.1f}" y="{ty}" font-size="10" fill="{color}" text-anchor="{anchor}">'
                          f'{escape(label)}</text>')

    def hline(self, y: float, label: str, color: str = SLO_COLOR, dash: str = "5,4") -> None:
        if not self.y0 <= y <= self.y1:
            self.legend.append((f"{label} (off the chart)", color, True))
            return
        yp = self.py(y)
        self.parts.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{yp:.1f}" y2="{yp:.1f}" '
                          f'stroke="{color}" stroke-width="1.2" stroke-dasharray="{dash}"/>')
        self.parts.append(f'<text x="{self.width - self.right - 4}" y="{yp - 3:.1f}" font-size="10" fill="{color}" '
                          f'text-anchor="end">{escape(label)}</text>')

    def point_label(self, x: float, y: float, text: str, color: str = "#333") -> None:
        """A small label beside a point; above it, or below when that would overlap the previous label."""
        xp, yp = self.px(x), self.py(y)
        above = True
        last = self._last_point_label
        if last is not None and abs(last[0] - xp) < 6 * max(len(text), 4) and abs(last[1] - yp) < 14:
            above = not last[2]
        self._last_point_label = (xp, yp, above)
        ty = yp - 7 if above else yp + 14
        anchor = "end" if xp > self.width - self.right - 40 else "start"
        tx = xp - 5 if anchor == "end" else xp + 5
        self.parts.append(f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="9.5" fill="{color}" '
                          f'text-anchor="{anchor}">{escape(text)}</text>')

    def _band(self) -> list[str]:
        """The labels of top marks, each in the first row where it overlaps none (cut short if none has room)."""
        rows: list[list[tuple[float, float]]] = [[] for _ in range(self.band_rows)]
        out = []
        for xp, text, color in sorted(self.band):
            width = 5.6 * len(text) + 4
            shift = max(0.0, 2 + width / 2 - xp) - max(0.0, xp + width / 2 - (self.width - 2))
            lo, hi = xp + shift - width / 2, xp + shift + width / 2
            row = next((i for i, used in enumerate(rows) if all(hi < a or lo > b for a, b in used)), None)
            if row is None:
                row, text = len(rows) - 1, text[:3] + "…"
            rows[row].append((lo, hi))
            y = self.top - 4 - 12 * (self.band_rows - 1 - row)
            out.append(f'<text x="{(lo + hi) / 2:.1f}" y="{y}" font-size="10" fill="{color}" '
                       f'text-anchor="middle">{escape(text)}</text>')
        return out

    def render(self) -> str:
        w, h = self.width, self.height
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
               f'font-family="sans-serif" role="img" aria-label="{escape(self.title)}">',
               f'<rect width="{w}" height="{h}" fill="#fff"/>',
               f'<text x="{w / 2:.0f}" y="17" font-size="13" text-anchor="middle" font-weight="bold">'
               f'{escape(self.title)}</text>']
        for t in log_ticks(self.x0, self.x1) if self.log_x else nice_ticks(self.x0, self.x1):
            xp = self.px(t)
            out.append(f'<line x1="{xp:.1f}" x2="{xp:.1f}" y1="{self.top}" y2="{h - self.bottom}" stroke="#eee"/>')
            out.append(f'<text x="{xp:.1f}" y="{h - self.bottom + 14}" font-size="10" text-anchor="middle">'
                       f'{fmt(t)}</text>')
        for t in nice_ticks(self.y0, self.y1):
            yp = self.py(t)
            out.append(f'<line x1="{self.left}" x2="{w - self.right}" y1="{yp:.1f}" y2="{yp:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{self.left - 5}" y="{yp + 3:.1f}" font-size="10" text-anchor="end">{fmt(t)}</text>')
        out.append(f'<rect x="{self.left}" y="{self.top}" width="{w - self.left - self.right}" '
                   f'height="{h - self.top - self.bottom}" fill="none" stroke="#999"/>')
        out.extend(self.parts)
        out.extend(self._band())
        out.append(f'<text x="{(self.left + w - self.right) / 2:.0f}" y="{h - 8}" font-size="11" '
                   f'text-anchor="middle">{escape(self.x_label)}</text>')
        out.append(f'<text transform="translate(13,{(self.top + h - self.bottom) / 2:.0f}) rotate(-90)" '
                   f'font-size="11" text-anchor="middle">{escape(self.y_label)}</text>')
        shown = self.legend[:10]
        wide = max((len(label) for label, _, _ in shown), default=0) * 5.6 + 24
        for i, (label, color, dashed) in enumerate(shown):
            if self.legend_corner == "bottom-right":
                y = self.height - self.bottom - 10 - (len(shown) - 1 - i) * 14
                x = round(self.width - self.right - 8 - wide)
            else:
                y = self.top + 8 + i * 14
                x = self.left + 8
            dash = ' stroke-dasharray="4,3"' if dashed else ""
            out.append(f'<line x1="{x}" x2="{x + 16}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2.5"{dash}/>')
            out.append(f'<text x="{x + 20}" y="{y + 4}" font-size="10">{escape(label)}</text>')
        out.append("</svg>")
        return "".join(out)
