"""bench/pong_learning.py's median over seeds: what the README's Pong rows are read from."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports bench/machine.py as its neighbour
    try:
        spec = importlib.util.spec_from_file_location("pong_learning", BENCH / "pong_learning.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _curve(path: Path, bench, points: list[tuple[int, float, float]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=bench.FIELDS)
        w.writeheader()
        for steps, wall_s, reward in points:
            w.writerow({"env_steps": steps, "wall_s": wall_s, "episode_reward_mean": reward})
    return path


def test_the_median_of_three_seeds_reads_steps_and_minutes_to_each_level(bench, tmp_path, capsys):
    """Two of three runs reach 18 (at 17 and 22 minutes): the median is the slower of the two;
    a run that never reached it counts as above both. Mutation: minutes read from env_steps (the
    minutes assertion fails)."""
    fast = [(1_000_000, 600, -5.0), (2_000_000, 17 * 60, 18.1), (3_000_000, 26 * 60, 19.0)]
    slow = [(1_000_000, 600, -15.0), (2_000_000, 22 * 60, 18.0), (2_600_000, 30 * 60, 18.3)]
    never = [(1_000_000, 600, -19.0), (2_000_000, 20 * 60, -2.0), (2_500_000, 30 * 60, 12.0)]
    paths = [_curve(tmp_path / f"s{i}.csv", bench, run) for i, run in enumerate((fast, slow, never))]
    out = bench.median_of_runs(paths)
    assert out["minutes to 18"] == {"median": 22.0, "low": 17.0, "high": None, "each": [17.0, 22.0, None]}
    assert out["steps to 18"]["median"] == 2_000_000
    assert out["steps to 0"]["each"] == [2_000_000, 2_000_000, 2_500_000]
    assert "minutes to 18: median 22.0 (range 17.0 to not reached" in capsys.readouterr().out


def test_the_report_names_the_rlq_curve_it_was_given(bench, tmp_path, capsys):
    """With --peer-only rlq's curve is an earlier run's: the printout says so on every rlq line.
    Mutation: report() printing "rlq" whatever it is given (the assertions on the label fail)."""
    rlq = _curve(tmp_path / "curve.csv", bench, [(500_000, 300, -15.0), (1_000_000, 660, 2.0)])
    _curve(tmp_path / "peer-cleanrl-envpool.csv", bench, [(150_000, 300, -20.0), (300_000, 660, -19.0)])
    bench.report(rlq, "t", "rlq (the earlier run's curve.csv)")
    out = capsys.readouterr().out
    assert "rlq (the earlier run's curve.csv): reached 1,000,000 agent steps in 11.0 min" in out
    assert "at 10 min: rlq (the earlier run's curve.csv) " in out
    assert "at 300,000 steps: rlq (the earlier run's curve.csv) " in out
    assert "\nrlq:" not in out and (tmp_path / "curve.png").exists()
