"""The completion message: posted to the ``training-completed`` topic, the reply queue, webhooks and
Teams when a run ends, and each notification target's :class:`Delivery`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.contracts.base import Strict, utcnow
from shared.contracts.models import ModelSection

Status = Literal["Completed", "Failed", "Canceled", "TimedOut"]
StopReason = Literal[
    "reward_reached", "time_limit", "timesteps_limit", "iterations_limit", "error", "canceled", "stalled"
]


class CompletionMessage(Strict):
    """Posted to the ``training-completed`` topic, the reply queue, webhooks and Teams."""

    message_id: str
    request_id: str
    run_id: str | None = None
    status: Status
    stop_reason: StopReason | None = None
    experiment: str = "rlq"
    algorithm: str | None = None
    env: str | None = None
    final_reward: float | None = None
    best_reward: float | None = None
    iterations: int | None = None
    timesteps: int | None = None
    duration_s: float | None = None
    checkpoint_path: str | None = None
    # The run this one was warm-started from (``restore_from: rlq://<parent_request_id>``).
    parent_request_id: str | None = None
    eval_reward: float | None = None
    replay_path: str | None = None
    reward_curve_url: str | None = None
    error: str | None = None
    portal_url: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    finished_at: datetime = Field(default_factory=utcnow)
    # Jobs the run took: 1, or more when a job lost with its machines was resumed from its checkpoint.
    attempts: int = 1
    # True when the compute twin reported the run: nothing was trained, the figures are made up.
    simulated: bool = False
    # What the run did to its model (docs/models.md): its version, both evaluations, promoted or
    # not, the champion's checkpoint. None: nothing registered (the run did not complete with a
    # checkpoint, or the deployment keeps no model registry).
    model: ModelSection | None = None


class Delivery(BaseModel):
    """One notification target's outcome."""

    target: str
    ok: bool
    attempts: int = 0
    status_code: int | None = None
    error: str | None = None
    at: datetime = Field(default_factory=utcnow)
