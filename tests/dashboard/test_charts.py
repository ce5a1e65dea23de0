"""The inline-SVG charts and the run views: geometry, escaping, progress and elapsed time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress, RunRecord, RunState
from shared.dashboard.charts import nice_ticks, reward_svg, sparkline_svg
from shared.dashboard.views import elapsed_s, progress_fraction, safe_link


def points(rewards, lo=None, hi=None):
    return [
        {
            "iteration": i + 1,
            "timesteps": (i + 1) * 1000,
            "episode_reward_mean": r,
            **({"episode_reward_min": r - lo} if lo else {}),
            **({"episode_reward_max": r + hi} if hi else {}),
        }
        for i, r in enumerate(rewards)
    ]


def test_nice_ticks_cover_the_range_in_round_steps():
    assert nice_ticks(0, 150) == [0, 50, 100, 150]
    assert nice_ticks(-21, 21) == [-30, -20, -10, 0, 10, 20, 30]
    assert nice_ticks(5, 5) == [4.0, 4.5, 5.0, 5.5, 6.0]  # a flat series still gets an axis
    assert nice_ticks(float("nan"), 1) == []


def test_reward_svg_draws_the_mean_band_target_and_best_inside_the_plot():
    svg = str(reward_svg(points([10, 40, 30, 90], lo=5, hi=5), title="t", target=150))
    root = ElementTree.fromstring(svg)  # well-formed XML
    ns = ""
    line = root.find(f"{ns}polyline")
    coords = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert len(coords) == 4 and root.get("data-points") == "4"
    assert all(56 <= x <= 706 and 14 <= y <= 260 for x, y in coords)
    assert coords[3][1] < coords[1][1] < coords[2][1] < coords[0][1]  # higher reward, higher on screen
    assert root.find("polygon").get("class") == "band"
    target = [el for el in root.iter("line") if el.get("class") == "target"]
    assert len(target) == 1 and float(target[0].get("y1")) == 14.0  # 150 is the top tick
    best = root.find("circle")
    assert (float(best.get("cx")), float(best.get("cy"))) == coords[3]
    assert "environment steps" in svg


def test_reward_svg_without_points_says_so_and_escapes_its_title():
    svg = str(reward_svg([], title='<b>"x"</b>'))
    assert "no training iterations recorded yet" in svg and 'data-points="0"' in svg
    assert "<b>" not in svg and "&lt;b&gt;&#34;x&#34;&lt;/b&gt;" in svg
    ElementTree.fromstring(svg)


def test_reward_svg_thins_long_series():
    svg = str(reward_svg(points([float(i % 50) for i in range(5000)]), title="long"))
    assert 'data-points="600"' in svg


def test_sparkline_scales_into_its_box_and_skips_missing_values():
    svg = str(sparkline_svg([1.0, None, 3.0, float("nan"), 2.0]))
    coords = [
        tuple(map(float, p.split(",")))
        for p in re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    ]
    assert len(coords) == 3 and coords[0][1] == 26.0 and coords[1][1] == 2.0
    assert str(sparkline_svg([])) == "" and str(sparkline_svg([None])) == ""
    assert 'data-points="121"' in str(sparkline_svg(range(1000)))


def record(stop, progress=None, state=RunState.running, **kw) -> RunRecord:
    req = TrainingRequest(request_id="r", env="CartPole-v1", stop=stop)
    return RunRecord(request_id="r", request=req, state=state, progress=progress, **kw)


def test_progress_is_the_criterion_closest_to_stopping_the_run():
    p = Progress(iteration=5, time_total_s=30.0, timesteps=40_000, episode_reward_mean=50.0)
    assert progress_fraction(record({"time_total_s": 60, "timesteps_total": 50_000}, p)) == (0.8, "timesteps")
    assert progress_fraction(record({"episode_reward_mean": 100, "training_iteration": 20}, p)) == (
        0.5,
        "reward",
    )
    assert progress_fraction(record({"training_iteration": 2}, p)) == (1.0, "iterations")  # clamped
    acrobot = record({"episode_reward_mean": -100}, p)
    assert progress_fraction(acrobot) == (None, None)  # a ratio to a negative target means nothing
    assert progress_fraction(record({"time_total_s": 60})) == (None, None)  # no progress yet
    assert progress_fraction(record({"time_total_s": 60}, state=RunState.completed)) == (1.0, None)


def test_elapsed_runs_from_start_to_finish_or_now():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    running = record({"time_total_s": 60}, started_at=t0)
    assert elapsed_s(running, now=t0 + timedelta(seconds=42)) == 42.0
    done = record(
        {"time_total_s": 60}, state=RunState.notified, started_at=t0, finished_at=t0 + timedelta(seconds=7)
    )
    assert elapsed_s(done, now=t0 + timedelta(hours=1)) == 7.0
    assert elapsed_s(record({"time_total_s": 60}, state=RunState.received)) is None


def test_only_http_links_are_links():
    assert safe_link("https://ml.azure.com/x") == "https://ml.azure.com/x"
    assert safe_link("http://127.0.0.1:8265/#/jobs/x") == "http://127.0.0.1:8265/#/jobs/x"
    for bad in (
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "data:text/html,x",
        "file:///etc/passwd",
        "",
        None,
    ):
        assert safe_link(bad) is None


def test_the_png_the_dashboard_and_the_cli_read_the_same_rewards_from_the_same_rows(tmp_path, monkeypatch):
    """One reader (shared.curves): every reward key counts, NaN / infinity / a boolean is no point."""
    import json

    from shared import plots
    from shared.artifacts import reward_curve_for
    from shared.cli.render import _rewards
    from shared.dashboard.views import run_view
    from shared.settings import Settings

    rows = [
        {"iteration": 1, "timesteps": 1000, "episode_reward_mean": 10.0},
        {"iteration": 2, "timesteps": 2000, "env_runners/episode_return_mean": 20.0},
        {"iteration": 3, "timesteps": 3000, "episode_reward_mean": float("nan")},
        {"iteration": 4, "timesteps": 4000, "episode_return_mean": 40.0},
        {"iteration": 5, "timesteps": 5000, "episode_reward_mean": True},
        {"iteration": 6, "timesteps": 6000, "episode_reward_mean": float("inf"), "episode_return_mean": 60.0},
    ]
    settings = Settings(data_dir=tmp_path)
    (settings.runs_dir / "r").mkdir(parents=True)
    (settings.runs_dir / "r" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rec = record({"timesteps_total": 10_000})
    want = [10.0, 20.0, 40.0, 60.0]

    drawn = []  # what the PNG plots: the means its series hands to matplotlib
    real = plots.reward_series
    monkeypatch.setattr(plots, "reward_series", lambda pts: drawn.append(real(pts)) or drawn[-1])
    assert reward_curve_for(rec, settings) is not None
    assert drawn[0][2] == want

    view = run_view(rec, settings)
    assert [r for r in view.rewards if r is not None] == want
    assert view.best_reward == 60.0
    assert 'data-points="4"' in str(reward_svg(view.points, title="t"))

    assert _rewards(rec, settings) == want
