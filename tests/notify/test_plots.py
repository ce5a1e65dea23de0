"""The reward curve PNG, the metrics reader and the sparkline."""

from __future__ import annotations

import io
import json
import math

import pytest
from PIL import Image

from shared.curves import load_metrics, reward_series
from shared.plots import reward_curve_png, sparkline


def cartpole_points(n: int = 60) -> list[dict]:
    out = []
    for i in range(1, n + 1):
        mean = min(500.0, 20 + 9.0 * i + 15 * math.sin(i))
        out.append(
            {
                "iteration": i,
                "timesteps": 4000 * i,
                "time_total_s": 2.0 * i,
                "episode_reward_mean": mean,
                "episode_reward_min": max(8.0, mean - 60),
                "episode_reward_max": min(500.0, mean + 80),
            }
        )
    return out


def open_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every pixel: a truncated or corrupt file fails here
    return img


@pytest.mark.parametrize(("w", "h"), [(800, 400), (640, 320), (333, 177), (1200, 500)])
def test_png_is_a_real_image_of_the_requested_size_with_the_title(w: int, h: int) -> None:
    img = open_png(
        reward_curve_png(
            cartpole_points(), title="cartpole: IMPALA CartPole-v1", target=450, width_px=w, height_px=h
        )
    )
    assert img.format == "PNG" and img.size == (w, h)
    assert img.info["Title"] == "cartpole: IMPALA CartPole-v1"


def test_the_curve_is_drawn_not_a_blank_canvas() -> None:
    img = open_png(reward_curve_png(cartpole_points(), title="t", target=450)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # anti-aliased line, band, text
    # the line colour (blue) and the target line colour (red) are present
    pixels = set(img.getdata())
    assert any(b > 180 and r < 80 for r, g, b in pixels)
    assert any(r > 180 and g < 80 and b < 80 for r, g, b in pixels)


def test_compact_png_is_smaller_and_keeps_size_and_title() -> None:
    points = cartpole_points()
    full = reward_curve_png(points, title="x", width_px=480, height_px=240)
    small = reward_curve_png(points, title="x", width_px=480, height_px=240, compact=True)
    img = open_png(small)
    assert img.size == (480, 240) and img.info["Title"] == "x" and img.mode == "P"
    assert len(small) < len(full) / 2


def test_empty_and_huge_series_still_render() -> None:
    assert open_png(reward_curve_png([], title="nothing yet", target=None)).size == (800, 400)
    huge = [
        {"iteration": i, "timesteps": i * 500, "episode_reward_mean": (i * 7919) % 500} for i in range(60_000)
    ]
    assert open_png(reward_curve_png(huge, title="huge", width_px=400, height_px=200)).size == (400, 200)


def test_series_uses_steps_when_present_else_iterations() -> None:
    label, xs, means, mins, maxs = reward_series(cartpole_points(3))
    assert label == "environment steps" and xs == [4000.0, 8000.0, 12000.0]
    assert mins[0] is not None and maxs[0] is not None
    label, xs, means, *_ = reward_series(
        [
            {"iteration": 5, "episode_reward_mean": 1.0},
            {"iteration": 6, "episode_reward_mean": None},
            {"iteration": 7, "episode_reward_mean": 3.0},
        ]
    )
    assert label == "iteration" and xs == [5.0, 7.0] and means == [1.0, 3.0]


def test_load_metrics_skips_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(p) for p in cartpole_points(5)]
    path.write_text("\n".join(lines) + "\n" + '{"iteration": 6, "episode_rew')
    points = load_metrics(path)
    assert [p["iteration"] for p in points] == [1, 2, 3, 4, 5]
    assert load_metrics(tmp_path / "absent.jsonl") == []


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([]) == "" and sparkline([None, float("nan")]) == ""
    assert sparkline([3, 3, 3]) == "▄▄▄"
    long = sparkline(range(1000), width=40)
    assert len(long) == 40 and long[0] == "▁" and long[-1] == "█"
    assert list(long) == sorted(long)  # a rising series stays rising after bucketing
    assert len(sparkline(range(5), width=40)) == 5
