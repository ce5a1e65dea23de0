"""The one reader of reward rows: which keys a row's reward, range and x are under, which values
count, and the run record's compact curve as rows.

A row is one training iteration as the trainer logged it (a ``metrics.jsonl`` line, an
``RLQ_METRICS`` log line) or as the record kept it (:attr:`RunRecord.curve`). The PNG
(:mod:`shared.plots`), the dashboard's SVG and views and the CLI's sparkline all read rows
through here, so they show the same points for the same run:

* every name a reward goes under counts, the trainer's first (:data:`REWARD_KEYS`);
* only a finite number is a value: NaN, infinity, a boolean or a string is no value, and a row
  without a reward is no point;
* one timeline: a run resumed after a lost job logs on in the same ``metrics.jsonl`` (and the
  record's curve) from its checkpoint's iteration, so iterations repeat; :func:`one_timeline`
  keeps, for each iteration, the latest attempt's row (:func:`load_metrics` and
  :func:`record_points` apply it).

No matplotlib here: the core and the CLI import this without drawing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "MAX_KEYS",
    "MIN_KEYS",
    "REWARD_KEYS",
    "Series",
    "best",
    "load_metrics",
    "number",
    "one_timeline",
    "record_points",
    "reward",
    "reward_series",
    "rewards",
]

# Keys the trainer writes (first) and the names newer RLlib results use (fallback).
REWARD_KEYS = ("episode_reward_mean", "env_runners/episode_return_mean", "episode_return_mean")
MIN_KEYS = ("episode_reward_min", "env_runners/episode_return_min", "episode_return_min")
MAX_KEYS = ("episode_reward_max", "env_runners/episode_return_max", "episode_return_max")
STEP_KEYS = ("timesteps", "num_env_steps_sampled_lifetime")
ITERATION_KEYS = ("iteration", "training_iteration")

Row = Mapping[str, Any]
R = TypeVar("R", bound=Mapping[str, Any])
# (x_label, xs, means, mins, maxs): what a chart of the rows draws.
Series = tuple[str, list[float], list[float], list[float | None], list[float | None]]


def number(row: Row, keys: Sequence[str]) -> float | None:
    """The first of ``keys`` in ``row`` that holds a finite number (not a boolean), else None."""
    for key in keys:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def reward(row: Row) -> float | None:
    """The row's mean episode reward, under any of :data:`REWARD_KEYS`; None when it has none."""
    return number(row, REWARD_KEYS)


def rewards(rows: Iterable[Row]) -> list[float]:
    """The mean rewards of the rows that have one, in order."""
    return [r for r in (reward(row) for row in rows if isinstance(row, Mapping)) if r is not None]


def best(rows: Iterable[Row]) -> float | None:
    """The highest mean reward of the rows, or None when none has one."""
    values = rewards(rows)
    return max(values) if values else None


def reward_series(rows: Iterable[Row]) -> Series:
    """``(x_label, xs, means, mins, maxs)`` of the rows that carry a mean reward.

    x is environment steps when the rows carry them, else the iteration number.
    """
    kept = [row for row in rows if isinstance(row, Mapping) and reward(row) is not None]
    use_steps = any((number(row, STEP_KEYS) or 0) > 0 for row in kept)
    xs: list[float] = []
    means: list[float] = []
    mins: list[float | None] = []
    maxs: list[float | None] = []
    for i, row in enumerate(kept, start=1):
        x = number(row, STEP_KEYS if use_steps else ITERATION_KEYS)
        xs.append(float(i) if x is None else x)
        means.append(reward(row) or 0.0)
        mins.append(number(row, MIN_KEYS))
        maxs.append(number(row, MAX_KEYS))
    return ("environment steps" if use_steps else "iteration"), xs, means, mins, maxs


def one_timeline(rows: Iterable[R]) -> list[R]:
    """The rows of the attempt that went on, in order.

    A row whose iteration is not above an earlier row's starts a resumed attempt: the job before
    it was lost and the next went on from a checkpoint below what it had reached. The earlier rows
    from that iteration on (the lost attempt's training after its checkpoint) are left out; rows
    without an iteration are kept where they are.
    """
    out: list[R] = []
    last = -math.inf
    for row in rows:
        iteration = number(row, ITERATION_KEYS) if isinstance(row, Mapping) else None
        if iteration is not None:
            if iteration <= last:
                out = [
                    r for r in out if not ((i := number(r, ITERATION_KEYS)) is not None and i >= iteration)
                ]
            last = iteration
        out.append(row)
    return out


def record_points(curve: Iterable[tuple[int, int, float | None]]) -> list[dict[str, Any]]:
    """The run record's compact curve (``[iteration, timesteps, reward]``) as rows, one timeline."""
    rows = [{"iteration": i, "timesteps": t, "episode_reward_mean": r} for i, t, r in curve]
    return one_timeline(rows)


def load_metrics(path: Path | str) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` as dicts; a missing file is empty.

    The trainer appends while we read, so the last line may be torn: lines that do not parse as
    a JSON object are skipped rather than failing the whole picture. A resumed run's file holds
    its lost attempt's rows too: only :func:`one_timeline`'s are returned.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return one_timeline(out)
