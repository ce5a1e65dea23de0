"""The metrics rows: the smoothed reward, warm-up iterations, counters that go on across a restore."""

from __future__ import annotations

import json

from trainer.metrics import Offsets, Progress, RewardWindow


def result(timesteps: int, episodes: int, mean: float | None = None, completed: int = 0) -> dict:
    """An RLlib 2.60 ``algo.train()`` result, reduced to what the rows read."""
    return {
        "num_env_steps_sampled_lifetime": timesteps,
        "env_runners": {
            "num_episodes_lifetime": episodes,
            "num_episodes": completed,
            "episode_return_mean": mean,
            "episode_return_min": mean,
            "episode_return_max": mean,
        },
        "learners": {"default_policy": {"total_loss": 0.5, "entropy": 0.6, "other": 1.0}},
    }


def test_reward_window_is_last_100_episodes():
    w = RewardWindow(100)
    assert w.stats() == (None, None, None)
    w.add(10.0, 50, 5.0, 20.0)
    w.add(float("nan"), 0, None, None)  # an iteration without episodes changes nothing
    assert w.stats() == (10.0, 5.0, 20.0)
    w.add(30.0, 50, 25.0, 40.0)
    assert w.stats() == (20.0, 5.0, 40.0)
    w.add(50.0, 80, 45.0, 60.0)  # 80 newest + 20 of the previous iteration
    mean, lo, hi = w.stats()
    assert mean == (50.0 * 80 + 30.0 * 20) / 100 and lo == 25.0 and hi == 60.0


def test_warm_up_iterations_are_not_rows_and_the_first_sample_is_iteration_1():
    progress = Progress(Offsets())
    assert progress.row(result(0, 0), 0.0) is None
    row = progress.row(result(100, 2, mean=10.0, completed=2), 0.0)
    assert row is not None
    assert (row["iteration"], row["timesteps"], row["episodes_total"], row["episodes"]) == (1, 100, 2, 2)
    assert row["episode_reward_mean"] == 10.0 and progress.best == 10.0
    assert (row["learner/total_loss"], row["learner/entropy"]) == (0.5, 0.6) and "learner/other" not in row
    # After the first row an iteration without new samples is a row: only warm-up is skipped.
    assert progress.row(result(100, 2), 0.0)["iteration"] == 2
    assert progress.best == 10.0


def test_a_restored_run_counts_on_from_the_checkpoint(tmp_path):
    (tmp_path / "rlq_meta.json").write_text(
        json.dumps({"iteration": 3, "timesteps": 900, "episodes_total": 40})
    )
    offsets = Offsets.of_checkpoint(tmp_path)
    assert offsets == Offsets(iteration=3, timesteps=900, episodes=40)
    # RLlib 2.60 restores its lifetime counters with the checkpoint: they are not added twice.
    progress = Progress(offsets)
    assert progress.row(result(900, 40), 0.0) is None  # the checkpoint's own count: still warming up
    row = progress.row(result(1000, 43), 0.0)
    assert (row["iteration"], row["timesteps"], row["episodes_total"]) == (4, 1000, 43)


def test_counters_an_older_checkpoint_did_not_restore_are_added(tmp_path):
    progress = Progress(Offsets(iteration=3, timesteps=900, episodes=40))
    row = progress.row(result(100, 2), 0.0)
    assert (row["iteration"], row["timesteps"], row["episodes_total"]) == (4, 1000, 42)
    assert Offsets.of_checkpoint(tmp_path) == Offsets()  # no rlq_meta.json
