"""What the pages show about a run, computed once from its record: progress, elapsed, rewards, links.

No HTML here (that is the templates' job) and no I/O beyond the run's own metrics file, read
through :func:`shared.artifacts.metrics_points`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from shared.artifacts import metrics_points
from shared.contracts.base import utcnow
from shared.contracts.run import ACTIVE, FINAL, TERMINAL, RunRecord, RunState
from shared.curves import best, record_points, reward
from shared.settings import Settings
from shared.urlguard import redact

# States in which a Cancel can still change the outcome.


def progress_fraction(record: RunRecord) -> tuple[float | None, str | None]:
    """How far the run is towards whichever stop criterion it is closest to: ``(0..1, criterion)``.

    A run that completed is at 1; one with no progress yet, or whose only criterion is a reward
    target at or below zero (where a ratio means nothing), is ``(None, None)``.
    """
    if record.state is RunState.completed or (record.completion and record.completion.status == "Completed"):
        return 1.0, None
    req, p = record.request, record.progress
    if req is None or p is None:
        return None, None
    stop = req.stop
    candidates: list[tuple[float, str]] = []
    if stop.time_total_s:
        candidates.append((p.time_total_s / stop.time_total_s, "time"))
    if stop.timesteps_total:
        candidates.append((p.timesteps / stop.timesteps_total, "timesteps"))
    if stop.training_iteration:
        candidates.append((p.iteration / stop.training_iteration, "iterations"))
    if stop.episode_reward_mean and stop.episode_reward_mean > 0 and p.episode_reward_mean is not None:
        candidates.append((p.episode_reward_mean / stop.episode_reward_mean, "reward"))
    if not candidates:
        return None, None
    value, name = max(candidates)
    return max(0.0, min(1.0, value)), name


def elapsed_s(record: RunRecord, now: datetime | None = None) -> float | None:
    """Seconds from the start of training (or submission) to its end, or to now while it runs."""
    began = record.started_at or record.submitted_at
    if began is None:
        return None
    end = record.finished_at or (None if record.state in FINAL else (now or utcnow()))
    if end is None:
        end = record.updated_at
    return max(0.0, (end - began).total_seconds())


def safe_link(url: str | None) -> str | None:
    """``url`` when it is an http(s) URL a page may link to (never ``javascript:`` and the like)."""
    if not url:
        return None
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in ("http", "https") else None


def request_json(record: RunRecord) -> str | None:
    """The request as the page shows it: indented JSON without unset fields, webhook and Teams
    URLs redacted (a Teams Workflows URL carries its signature in the query string)."""
    if record.request is None:
        return None
    data = redact_notify(record.request.model_dump(mode="json", exclude_none=True))
    return json.dumps(data, indent=2, ensure_ascii=False)


def redact_notify(data: Any) -> Any:
    """A request body (parsed JSON, valid or not) with its webhook and Teams URLs redacted."""
    notify = data.get("notify") if isinstance(data, dict) else None
    if isinstance(notify, dict):
        for kind in ("webhooks", "teams"):
            urls = notify.get(kind)
            if isinstance(urls, list):
                notify[kind] = [redact(u) if isinstance(u, str) else u for u in urls]
    return data


@dataclass
class RunView:
    """One run, ready for a template."""

    record: RunRecord
    points: list[dict[str, Any]]
    progress: float | None
    progress_by: str | None
    elapsed_s: float | None
    current_reward: float | None
    best_reward: float | None
    target: float | None
    portal_link: str | None
    parent_id: str | None

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def state(self) -> str:
        return self.record.state.value

    @property
    def waiting(self) -> str | None:
        """Why a deferred run still waits (``waiting for team quota: …``), while it does."""
        return self.record.waiting if self.record.state is RunState.received else None

    @property
    def algorithm(self) -> str | None:
        return self.record.request.algorithm if self.record.request else None

    @property
    def env(self) -> str | None:
        return self.record.request.env if self.record.request else None

    @property
    def experiment(self) -> str | None:
        return self.record.request.experiment if self.record.request else None

    @property
    def tags(self) -> dict[str, str]:
        return self.record.request.tags if self.record.request else {}

    @property
    def cancelable(self) -> bool:
        return self.record.state in ACTIVE and not self.record.cancel_requested

    @property
    def ended(self) -> bool:
        return self.record.state in FINAL

    @property
    def settled(self) -> bool:
        """Nothing more will change on the page: notified and its deliveries recorded. (A rejected
        run may still run: resubmitting its dead letter revives it.)"""
        return self.record.state is RunState.notified and self.record.notified_at is not None

    @property
    def poll_ms(self) -> int:
        """How soon the page asks again: soon while it trains, seldom while it waits on a person."""
        return 10_000 if self.record.state is RunState.rejected else 2_000

    @property
    def awaiting_publish(self) -> bool:
        return self.record.state in TERMINAL

    @property
    def rewards(self) -> list[float | None]:
        return [reward(p) for p in self.points]

    @property
    def title(self) -> str:
        if self.record.request is None:
            return self.record.request_id
        r = self.record.request
        return f"{r.experiment} · {r.algorithm} on {r.env}"


def run_view(
    record: RunRecord, settings: Settings, *, now: datetime | None = None, compact: bool = False
) -> RunView:
    """``compact``: the record's own thinned curve (a list of runs), not every logged iteration."""
    points = record_points(record.curve) if compact else metrics_points(record, settings)
    current = record.progress.episode_reward_mean if record.progress else None
    if record.completion is not None and record.completion.final_reward is not None:
        current = record.completion.final_reward
    highest = best(points)
    if record.completion is not None and record.completion.best_reward is not None:
        highest = record.completion.best_reward
    fraction, by = progress_fraction(record)
    return RunView(
        record=record,
        points=points,
        progress=fraction,
        progress_by=by,
        elapsed_s=elapsed_s(record, now),
        current_reward=current,
        best_reward=highest,
        target=record.request.stop.episode_reward_mean if record.request else None,
        portal_link=safe_link(record.portal_url),
        parent_id=record.parent_request_id,
    )
