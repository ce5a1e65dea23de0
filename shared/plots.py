"""Pictures of a run: the reward curve as a PNG (cards, API, README) and as a sparkline (terminal).
The rows are read by :mod:`shared.curves`, as the dashboard and the CLI read them.

matplotlib is driven through ``Figure`` + the Agg canvas directly, never ``pyplot``: no global
figure state, nothing to close, safe to call from the notifier's threads and the Functions host.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from shared.curves import reward_series

__all__ = ["reward_curve_png", "sparkline"]

_LINE = "#2563eb"
_BAND = "#93c5fd"
_TARGET = "#dc2626"
_BEST = "#16a34a"


def reward_curve_png(
    points: list[dict[str, Any]],
    *,
    title: str,
    target: float | None = None,
    width_px: int = 800,
    height_px: int = 400,
    compact: bool = False,
) -> bytes:
    """The mean episode reward per iteration as a PNG of exactly ``width_px`` x ``height_px``.

    Draws the min..max band where the points carry it and a dashed line at ``target``. The title
    is also stored in the PNG's ``Title`` text chunk so tools (and tests) can read it back.
    ``compact`` quantises to a small palette: a third of the bytes, for size-capped cards.
    """
    if width_px < 64 or height_px < 48 or width_px > 4000 or height_px > 4000:
        raise ValueError(f"image size {width_px}x{height_px} px is outside 64x48 .. 4000x4000")
    # Scale the dpi with the width (sub-linearly, so small card images keep legible text).
    dpi = min(200.0, max(50.0, 100.0 * math.sqrt(width_px / 800)))
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x_label, xs, means, mins, maxs = reward_series(points)
    if len(xs) > 2 * width_px:
        xs, means, mins, maxs = decimate(xs, means, mins, maxs, buckets=2 * width_px)

    if xs:
        band = [
            (x, lo, hi) for x, lo, hi in zip(xs, mins, maxs, strict=True) if lo is not None and hi is not None
        ]
        if len(band) >= 2:
            ax.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=_BAND,
                alpha=0.45,
                linewidth=0,
                label="episode reward min–max",
            )
        ax.plot(
            xs,
            means,
            color=_LINE,
            linewidth=1.8,
            label="episode reward mean",
            marker="o" if len(xs) <= 30 else None,
            markersize=3,
        )
        best = max(range(len(means)), key=means.__getitem__)
        ax.scatter([xs[best]], [means[best]], color=_BEST, s=28, zorder=5, label=f"best {means[best]:.4g}")
    else:
        ax.text(
            0.5,
            0.5,
            "no training iterations recorded yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#6b7280",
        )
        ax.set_xticks([])
        ax.set_yticks([])
    if target is not None:
        ax.axhline(target, color=_TARGET, linestyle="--", linewidth=1.3, label=f"target {target:g}")

    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(x_label, fontsize=9)
    ax.set_ylabel("episode reward", fontsize=9)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if xs or target is not None:
        # Rewards rise: the top left is the emptiest corner of a learning curve.
        ax.legend(loc="upper left", fontsize=8, frameon=True, framealpha=0.9, edgecolor="none")
    fig.tight_layout(pad=0.6)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Title": title, "Software": "rlq"})
    data = buf.getvalue()
    if compact or _size(data) != (width_px, height_px):
        data = _finish(data, title=title, size=(width_px, height_px), compact=compact)
    return data


def decimate(
    xs: list[float], means: list[float], mins: list[float | None], maxs: list[float | None], *, buckets: int
) -> tuple[list[float], list[float], list[float | None], list[float | None]]:
    """Fewer points than pixels: bucket means for the line, the bucket's extremes for the band."""
    out: tuple[list[float], list[float], list[float | None], list[float | None]] = ([], [], [], [])
    n = len(xs)
    for i in range(buckets):
        lo, hi = i * n // buckets, max((i + 1) * n // buckets, i * n // buckets + 1)
        out[0].append(xs[hi - 1])
        out[1].append(sum(means[lo:hi]) / (hi - lo))
        lows = [v for v in mins[lo:hi] if v is not None]
        highs = [v for v in maxs[lo:hi] if v is not None]
        out[2].append(min(lows) if lows else None)
        out[3].append(max(highs) if highs else None)
    return out


def _size(png: bytes) -> tuple[int, int]:
    # IHDR: width and height are the first two big-endian words after the 16-byte header.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _finish(png: bytes, *, title: str, size: tuple[int, int], compact: bool) -> bytes:
    """Fix a one-pixel rounding of the canvas and/or quantise, keeping the Title chunk."""
    from PIL import Image, PngImagePlugin

    img: Image.Image = Image.open(io.BytesIO(png)).convert("RGB")
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    if compact:
        img = img.quantize(colors=48, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    info.add_text("Software", "rlq")
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True, pnginfo=info)
    return out.getvalue()


_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None], width: int = 40) -> str:
    """A one-line picture of ``values`` (``rlq watch``): at most ``width`` blocks ▁..█.

    Longer series are averaged into ``width`` buckets so the whole run stays visible; missing
    and non-finite values are skipped.
    """
    vals = [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals or width < 1:
        return ""
    if len(vals) > width:
        buckets = []
        for i in range(width):
            start, end = i * len(vals) // width, (i + 1) * len(vals) // width
            chunk = vals[start : max(end, start + 1)]
            buckets.append(sum(chunk) / len(chunk))
        vals = buckets
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        return _BLOCKS[3] * len(vals)
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - lo) / (hi - lo) * top)] for v in vals)
