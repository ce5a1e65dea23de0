"""Reward charts as inline SVG, drawn on the server: the run page's curve and the runs list's sparklines.

The series comes from :func:`shared.curves.reward_series` (the PNG's source too), so the page, the
card and the API's reward.png show the same points. Only numbers and escaped text go into the
markup; colours are CSS classes, so the chart follows the page's light or dark scheme.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from markupsafe import Markup, escape

from shared.curves import reward_series
from shared.plots import decimate

MAX_SVG_POINTS = 600


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``lo..hi`` (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _label(v: float) -> str:
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def reward_svg(
    points: Sequence[dict[str, Any]],
    *,
    title: str,
    target: float | None = None,
    width: int = 720,
    height: int = 300,
    x_label: str | None = None,
    empty: str = "no training iterations recorded yet",
) -> Markup:
    """The mean episode reward per iteration (or per environment step), its min..max band, the
    target as a dashed line and the best point; a placeholder when nothing is recorded yet.
    ``x_label`` names the x axis when the rows' x is something else (a model's versions)."""
    series_label, xs, means, mins, maxs = reward_series(points)
    x_label = x_label or series_label
    if len(xs) > MAX_SVG_POINTS:
        xs, means, mins, maxs = decimate(xs, means, mins, maxs, buckets=MAX_SVG_POINTS)
    left, right, top, bottom = 56, 14, 14, 40
    pw, ph = width - left - right, height - top - bottom
    head = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet" '
        f'data-points="{len(xs)}"><title>{escape(title)}</title>'
    )
    if not xs:
        return Markup(
            f'{head}<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>'
            f'<text class="empty" x="{left + pw / 2:.0f}" y="{top + ph / 2:.0f}" text-anchor="middle">'
            f"{escape(empty)}</text></svg>"
        )
    ys: list[float] = [*means, *(v for v in mins if v is not None), *(v for v in maxs if v is not None)]
    if target is not None:
        ys.append(target)
    yt = nice_ticks(min(ys), max(ys))
    y0, y1 = yt[0], yt[-1]
    x0, x1 = (0.0, xs[-1]) if xs[-1] > 0 else (xs[0] - 1, xs[0] + 1)
    if x1 - x0 < 1e-12:
        x1 = x0 + 1.0
    xt = [t for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [head]
    for t in yt:
        parts.append(
            f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{_fmt(py(t))}" y2="{_fmt(py(t))}"/>'
            f'<text class="tick" x="{left - 6}" y="{_fmt(py(t) + 4)}" text-anchor="end">{_label(t)}</text>'
        )
    for t in xt:
        parts.append(
            f'<text class="tick" x="{_fmt(px(t))}" y="{top + ph + 16}" text-anchor="middle">{_label(t)}</text>'
        )
    parts.append(
        f'<text class="axis" x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text class="axis" transform="translate(14 {top + ph / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">episode reward</text>'
    )
    band = [
        (x, lo, hi) for x, lo, hi in zip(xs, mins, maxs, strict=True) if lo is not None and hi is not None
    ]
    if len(band) >= 2:
        upper = " ".join(f"{_fmt(px(x))},{_fmt(py(hi))}" for x, _, hi in band)
        lower = " ".join(f"{_fmt(px(x))},{_fmt(py(lo))}" for x, lo, _ in reversed(band))
        parts.append(f'<polygon class="band" points="{upper} {lower}"/>')
    if target is not None:
        ty = py(target)
        label_y = ty - 6 if ty - top > 24 else ty + 20  # below the line when it runs along the top
        parts.append(
            f'<line class="target" x1="{left}" x2="{left + pw}" y1="{_fmt(ty)}" y2="{_fmt(ty)}"/>'
            f'<text class="target-label" x="{left + pw - 4}" y="{_fmt(label_y)}" text-anchor="end">'
            f"target {_label(target)}</text>"
        )
    line = " ".join(f"{_fmt(px(x))},{_fmt(py(y))}" for x, y in zip(xs, means, strict=True))
    parts.append(f'<polyline class="mean" points="{line}"/>')
    best = max(range(len(means)), key=means.__getitem__)
    parts.append(
        f'<circle class="best" cx="{_fmt(px(xs[best]))}" cy="{_fmt(py(means[best]))}" r="4">'
        f"<title>best {means[best]:.4g}</title></circle></svg>"
    )
    return Markup("".join(parts))


def sparkline_svg(values: Iterable[float | None], *, width: int = 120, height: int = 28) -> Markup:
    """A small line of ``values`` for a table cell; empty markup when there is nothing to draw."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(vals) > width:
        step = len(vals) / width
        vals = [vals[min(len(vals) - 1, int(i * step))] for i in range(width)] + [vals[-1]]
    if not vals:
        return Markup("")
    lo, hi = min(vals), max(vals)
    span = hi - lo if hi - lo > 1e-12 else 1.0
    n = max(1, len(vals) - 1)
    pts = " ".join(
        f"{_fmt(1 + i / n * (width - 2))},{_fmt(height - 2 - (v - lo) / span * (height - 4))}"
        for i, v in enumerate(vals)
    )
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="reward {_label(vals[0])} to {_label(vals[-1])}" '
        f'data-points="{len(vals)}"><polyline points="{pts}"/></svg>'
    )
