"""A resumed run's reward curve: one timeline, the latest attempt's rows.

A job lost after its checkpoint at iteration 3 had logged iterations 4 and 5; attempt 2 resumed
from the checkpoint and logged 4 to 7 after them in the same ``metrics.jsonl`` (and the poller
appended its progress to the record's curve the same way). Every reader — the dashboard's chart and
views, the PNG, the CLI's sparkline — reads rows through ``shared.curves``, which keeps the row of
the attempt that went on for each iteration and leaves the lost attempt's 4 and 5 out.
"""

from __future__ import annotations

import json

from shared.contracts.run import RunRecord
from shared.curves import load_metrics, one_timeline, record_points, reward_series
from shared.dashboard.views import run_view
from shared.settings import Settings

LOST = [(1, 100, 1.0), (2, 200, 2.0), (3, 300, 3.0), (4, 400, 40.0), (5, 500, 50.0)]  # checkpoint at 3
RESUMED = [(4, 400, 4.0), (5, 500, 5.0), (6, 600, 6.0), (7, 700, 7.0)]


def rows(points):
    return [{"iteration": i, "timesteps": t, "episode_reward_mean": r} for i, t, r in points]


def test_a_resumed_metrics_file_reads_as_the_attempt_that_went_on(tmp_path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "rlq")  # type: ignore[call-arg]
    out = settings.runs_dir / "resumed"
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(LOST + RESUMED)))

    points = load_metrics(out / "metrics.jsonl")
    assert [(p["iteration"], p["episode_reward_mean"]) for p in points] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 5.0),
        (6, 6.0),
        (7, 7.0),
    ]
    _, xs, means, *_ = reward_series(points)
    assert xs == [100.0 * i for i in range(1, 8)] and means == [float(i) for i in range(1, 8)]

    view = run_view(RunRecord(request_id="resumed"), settings)  # the dashboard's run page
    assert view.points == points and view.best_reward == 7.0  # not the lost attempt's 50


def test_the_records_curve_of_a_resumed_run_is_one_timeline() -> None:
    record = RunRecord(request_id="resumed", curve=LOST + RESUMED)
    assert [tuple(p.values()) for p in record_points(record.curve)] == LOST[:3] + RESUMED
    assert run_view(record, Settings(_env_file=None), compact=True).best_reward == 7.0  # type: ignore[call-arg]


def test_one_timeline_keeps_rows_in_order_through_several_resumes() -> None:
    # attempt 1 to 6 (checkpoint 4), attempt 2 to 7 (checkpoint 5), attempt 3 on; a row without an iteration stays
    logged = [*range(1, 7), 5, 6, 7, 6, 7, 8]
    marked = [{"iteration": it, "n": n} for n, it in enumerate(logged)]
    marked.insert(3, {"note": "no iteration"})
    kept = one_timeline(marked)
    assert [r.get("iteration") for r in kept] == [1, 2, 3, None, 4, 5, 6, 7, 8]
    assert [r["n"] for r in kept if "n" in r][-4:] == [6, 9, 10, 11]  # 5 from attempt 2; 6, 7, 8 from 3
    assert one_timeline([]) == []
