"""What the trainer reports: one metrics row per iteration, the summary at the end, and the stdout
markers rlq reads them by.

The markers are the trainer's side of the log contract; rlq's side is ``shared/contracts/trainer.py``
(``trainer/`` is shipped alone, so it imports nothing from ``shared/``;
``tests/contract/test_trainer_contract.py`` checks both agree).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.sinks import clean, dumps

METRICS_MARK = "RLQ_METRICS "
SUMMARY_MARK = "RLQ_SUMMARY "
SMOOTHING_EPISODES = 100
LEARNER_STAT_KEYS = ("entropy", "vf_explained_var", "curr_kl_coeff", "mean_kl_loss")


class RewardWindow:
    """Mean/min/max episode return over the last ``n`` completed episodes.

    RLlib 2.60 reports the returns of the episodes completed in *this* iteration; the
    article-era ``episode_reward_mean`` was smoothed over the last 100 episodes, which is
    what the stop criterion and the metrics use. Built from (mean, count, min, max) per
    iteration (min/max are over the iterations the window touches)."""

    def __init__(self, n: int = SMOOTHING_EPISODES):
        self.n = n
        self.items: collections.deque = collections.deque()

    def add(self, mean: Any, count: Any, lo: Any, hi: Any) -> None:
        mean, count = clean(mean), clean(count)
        if mean is None or not count:
            return
        self.items.append((float(mean), int(count), clean(lo), clean(hi)))
        while len(self.items) > self.n:
            self.items.popleft()

    def stats(self) -> tuple[float | None, float | None, float | None]:
        total, n, lo, hi = 0.0, 0, None, None
        for mean, count, mn, mx in reversed(self.items):
            take = min(count, self.n - n)
            total += mean * take
            n += take
            if mn is not None:
                lo = mn if lo is None else min(lo, mn)
            if mx is not None:
                hi = mx if hi is None else max(hi, mx)
            if n >= self.n:
                break
        if not n:
            return None, None, None
        return total / n, lo, hi


def learner_stats(result: dict[str, Any]) -> dict[str, Any]:
    """Losses and a few learner figures, as ``learner/<stat>`` (``learner/<module>/<stat>`` beyond one module)."""
    out: dict[str, Any] = {}
    for module, stats in (result.get("learners") or {}).items():
        if module == "__all_modules__" or not isinstance(stats, dict):
            continue
        prefix = "learner/" if module == "default_policy" else f"learner/{module}/"
        for key, value in stats.items():
            if (key.endswith("loss") or key in LEARNER_STAT_KEYS) and isinstance(clean(value), (int, float)):
                out[prefix + key] = clean(value)
    return dict(sorted(out.items()))


@dataclass
class Offsets:
    """The counters of the checkpoint a run restores from (``rlq_meta.json``); zeros for a new run."""

    iteration: int = 0
    timesteps: int = 0
    episodes: int = 0
    # Training seconds the checkpoint's run had behind it: ``time_total_s`` (and its stop criterion)
    # goes on across a resume, so the time limit covers every attempt together.
    time_s: float = 0.0

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> Offsets:
        meta_file = checkpoint / "rlq_meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        return cls(
            iteration=int(meta.get("iteration") or 0),
            timesteps=int(meta.get("timesteps") or 0),
            episodes=int(meta.get("episodes_total") or 0),
            time_s=float(meta.get("time_total_s") or 0.0),
        )


class Progress:
    """RLlib's results as rlq's rows: iterations and counters that go on counting across a
    restore, the episode reward smoothed over the last 100 episodes, the best mean so far."""

    def __init__(self, offsets: Offsets):
        self.offsets = dataclasses.replace(offsets)  # its own: the counters RLlib restored are zeroed
        self.window = RewardWindow()
        self.rows: list[dict[str, Any]] = []
        self.best: float | None = None
        self.started = time.time()
        self._prev_timesteps = offsets.timesteps

    def elapsed(self) -> float:
        """Training seconds, the restored checkpoint's included."""
        return round(self.offsets.time_s + time.time() - self.started, 3)

    def row(self, result: dict[str, Any], iteration_started: float) -> dict[str, Any] | None:
        """This iteration's row; None for a warm-up iteration (no new sample yet), which is not
        reported or counted: IMPALA/APPO EnvRunners take a few seconds before their first sample."""
        runners = result.get("env_runners") or {}
        timesteps, episodes_total = self._counters(result, runners)
        if not self.rows and timesteps <= self._prev_timesteps:
            return None
        self.window.add(
            runners.get("episode_return_mean"),
            runners.get("num_episodes"),
            runners.get("episode_return_min"),
            runners.get("episode_return_max"),
        )
        mean, lo, hi = self.window.stats()
        seconds = max(time.time() - iteration_started, 1e-9)
        row = {
            "iteration": self.offsets.iteration + len(self.rows) + 1,
            "time_total_s": self.elapsed(),
            "timesteps": timesteps,
            "episode_reward_mean": mean,
            "episode_reward_min": lo,
            "episode_reward_max": hi,
            "episodes": int(clean(runners.get("num_episodes")) or 0),
            "episodes_total": episodes_total,
            "env_steps_per_s": round((timesteps - self._prev_timesteps) / seconds, 2),
            **learner_stats(result),
        }
        self._prev_timesteps = timesteps
        row = clean(row)
        self.rows.append(row)
        if mean is not None:
            self.best = mean if self.best is None else max(self.best, mean)
        return row

    def _counters(self, result: dict[str, Any], runners: dict[str, Any]) -> tuple[int, int]:
        """(timesteps, episodes) over the run's whole life, the restored checkpoint's included."""
        sampled = result.get("num_env_steps_sampled_lifetime") or runners.get(
            "num_env_steps_sampled_lifetime"
        )
        timesteps = int(clean(sampled or 0))
        episodes = int(clean(runners.get("num_episodes_lifetime")) or 0)
        if not self.rows:
            # RLlib 2.60 restores its lifetime counters with the checkpoint; only add the
            # checkpoint's own figures if they did not come back (e.g. older checkpoints).
            if timesteps >= self.offsets.timesteps:
                self.offsets.timesteps = 0
            if episodes >= self.offsets.episodes:
                self.offsets.episodes = 0
        return self.offsets.timesteps + timesteps, self.offsets.episodes + episodes


def new_summary(algorithm: str, env_id: str) -> dict[str, Any]:
    """``summary.json`` before the run: every key present, filled in as the run goes."""
    return {
        "algorithm": algorithm,
        "env": env_id,
        "stop_reason": None,
        "final_reward": None,
        "best_reward": None,
        "iterations": 0,
        "timesteps": 0,
        "duration_s": 0.0,
        "checkpoint_path": None,
    }


def print_row(row: dict[str, Any]) -> None:
    print(METRICS_MARK + dumps(row), flush=True)


def write_summary(output_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``DIR/summary.json`` and the ``RLQ_SUMMARY`` line (the last line on stdout)."""
    summary = clean(summary)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    print(SUMMARY_MARK + dumps(summary), flush=True)
    return summary
