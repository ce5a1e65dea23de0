"""Pictures of a run: the reward curve, from the trainer's metrics.jsonl or the run record."""

from __future__ import annotations

from pathlib import Path

from shared.contracts.run import RunRecord
from shared.curves import load_metrics, record_points
from shared.settings import Settings


def metrics_points(record: RunRecord, settings: Settings) -> list[dict]:
    """Every iteration the trainer logged when its output is local, else the record's compact curve."""
    path = Path(settings.runs_dir) / record.request_id / "metrics.jsonl"
    if path.is_file():
        points = load_metrics(path)
        if points:
            return points
    return record_points(record.curve)


def reward_curve_for(record: RunRecord, settings: Settings) -> bytes | None:
    from shared.plots import reward_curve_png

    points = metrics_points(record, settings)
    if not points:
        return None
    req = record.request
    title = f"{req.experiment} · {req.algorithm} on {req.env}" if req else record.request_id
    target = req.stop.episode_reward_mean if req else None
    return reward_curve_png(points, title=title, target=target)


def save_reward_curve(record: RunRecord, settings: Settings) -> Path | None:
    """Attach reward.png to the run's outputs (local runs) and return its path."""
    png = reward_curve_for(record, settings)
    if png is None:
        return None
    out = Path(settings.runs_dir) / record.request_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "reward.png").write_bytes(png)
    return out / "reward.png"
