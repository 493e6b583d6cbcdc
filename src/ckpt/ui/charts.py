"""Metric curves as SVG, drawn on the server: no chart library, no build step, nothing to download.

Several metrics share one chart; when losses and other metrics (accuracy...) are both shown, losses use
the left axis and the others the right one, as ``ckpt plot`` does. A curve from the training history
has every epoch (pruned ones too); the checkpoints still stored sit on it as dots that link to them, and
the best checkpoint is a star.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ckpt.ui.html import esc, url

MAX_DOTS = 400  # more checkpoints than this on one curve: the line alone (a dot each would be noise)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]  # NaN leaves a gap
    axis: str = "left"  # "left" | "right"
    points: list[tuple[float, float, str, str]] = field(default_factory=list)  # (x, y, checkpoint id, label)
    best: tuple[float, float, str, str] | None = None


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten; whole
    steps only when ``integer``, for epochs)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1, round(step))
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9 and len(out) < 50:
        out.append(round(v, 12))
        v += step
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _range(values: list[float]) -> tuple[float, float] | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def line_chart(series: list[Series], *, x_label: str = "epoch", width: int = 960, height: int = 360,
               chart_id: str = "metrics-chart") -> str:
    """An SVG chart of ``series``; empty string when nothing is finite."""
    xs = [x for s in series for x in s.x if math.isfinite(x)]
    if not xs:
        return ""
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    axes = {}
    for side in ("left", "right"):
        ys = [y for s in series if s.axis == side for y in s.y]
        ys += [p[1] for s in series if s.axis == side for p in s.points]
        r = _range(ys)
        if r is not None:
            axes[side] = r
    if not axes:
        return ""
    ml, mr, mt, mb = 64, (64 if "right" in axes and "left" in axes else 24), 34, 44
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:
        return ml + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float, side: str) -> float:
        lo, hi = axes[side] if side in axes else axes["left" if "left" in axes else "right"]
        return mt + ph - (y - lo) / (hi - lo) * ph

    parts = [f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {width} {height}" width="100%" '
             f'role="img" aria-label="metric curves" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot-bg"/>']
    # grid and axes
    for t in nice_ticks(x_lo, x_hi, 8, integer=all(float(x).is_integer() for x in xs)):
        if x_lo <= t <= x_hi:
            X = sx(t)
            parts.append(f'<line x1="{X:.1f}" y1="{mt}" x2="{X:.1f}" y2="{mt + ph}" class="grid"/>'
                         f'<text x="{X:.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">{_fmt(t)}</text>')
    for side in axes:
        lo, hi = axes[side]
        for t in nice_ticks(lo, hi, 5):
            if lo <= t <= hi:
                Y = sy(t, side)
                if side == "left" or "left" not in axes:
                    parts.append(f'<line x1="{ml}" y1="{Y:.1f}" x2="{ml + pw}" y2="{Y:.1f}" class="grid"/>')
                tx, anchor = (ml - 6, "end") if side == "left" else (ml + pw + 6, "start")
                parts.append(f'<text x="{tx}" y="{Y + 4:.1f}" class="tick" text-anchor="{anchor}">{_fmt(t)}</text>')
    parts.append(f'<text x="{ml + pw / 2:.0f}" y="{height - 8}" class="axis-label" text-anchor="middle">'
                 f'{esc(x_label)}</text>')
    for side, x in (("left", 14), ("right", width - 10)):
        names = [s.name for s in series if s.axis == side]
        if names and side in axes:
            parts.append(f'<text transform="translate({x},{mt + ph / 2:.0f}) rotate(-90)" class="axis-label" '
                         f'text-anchor="middle">{esc(", ".join(names))}</text>')
    # curves
    for n, s in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        dash = ' stroke-dasharray="6 3"' if s.axis == "right" and "left" in axes else ""
        segments: list[list[str]] = [[]]
        for x, y in sorted(zip(s.x, s.y), key=lambda p: p[0]):
            if math.isfinite(x) and math.isfinite(y):
                segments[-1].append(f"{sx(x):.1f},{sy(y, s.axis):.1f}")
            elif segments[-1]:
                segments.append([])
        parts.append(f'<g class="series" data-metric="{esc(s.name)}">')
        for seg in segments:
            if len(seg) == 1:
                parts.append(f'<circle cx="{seg[0].split(",")[0]}" cy="{seg[0].split(",")[1]}" r="2" fill="{color}"/>')
            elif seg:
                parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.8"'
                             f'{dash}/>')
        for x, y, cid, label in (s.points if len(s.points) <= MAX_DOTS else ()):
            if math.isfinite(x) and math.isfinite(y):
                parts.append(f'<a href="/checkpoint?id={esc(cid)}" class="pt"><circle cx="{sx(x):.1f}" '
                             f'cy="{sy(y, s.axis):.1f}" r="3.6" fill="{color}" stroke="#fff" stroke-width="1">'
                             f'<title>{esc(label)}</title></circle></a>')
        if s.best is not None and all(math.isfinite(v) for v in s.best[:2]):
            bx, by, cid, label = s.best
            parts.append(f'<a href="{esc(url("/checkpoint", id=cid))}" class="best-mark" data-id="{esc(cid)}">'
                         f'<polygon points="{_star(sx(bx), sy(by, s.axis), 10)}" fill="{color}" stroke="#111" '
                         f'stroke-width="1.2"><title>{esc(label)}</title></polygon></a>')
        parts.append("</g>")
    # legend
    lx = ml + 6
    for n, s in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        label = s.name + (" (right)" if s.axis == "right" and "left" in axes else "")
        parts.append(f'<g class="legend"><line x1="{lx}" y1="{mt - 14}" x2="{lx + 18}" y2="{mt - 14}" '
                     f'stroke="{color}" stroke-width="3"/><text x="{lx + 22}" y="{mt - 10}" class="legend-text">'
                     f'{esc(label)}</text></g>')
        lx += 30 + 7 * len(label)
    parts.append(f'<g class="legend"><polygon points="{_star(lx + 8, mt - 14, 7)}" fill="#bbb" stroke="#111"/>'
                 f'<text x="{lx + 20}" y="{mt - 10}" class="legend-text">best checkpoint</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _star(cx: float, cy: float, r: float) -> str:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append(f"{cx + rad * math.cos(a):.1f},{cy + rad * math.sin(a):.1f}")
    return " ".join(pts)
