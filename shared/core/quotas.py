"""Per-team quotas and the waiting line, as numbers and an order: no I/O here (the admission asks).

* A run *uses* GPU-hours from its submit until it ends: the GPUs of its compute shape (the
  request's ``compute.head`` / ``compute.workers`` from :data:`shared.contracts.vm_sizes.VM_SIZES`,
  or the deployment's default clusters on Azure ML; a Ray cluster rlq does not size counts 0)
  times the part of that time inside the current UTC day.
* The *line* is the deferred requests (:meth:`shared.ports.RunStore.waiting`). Its order: the
  level first (``high`` 2, ``normal`` 1, ``low`` 0, plus one level per ``priority_aging_s`` since
  the request was received, up to ``high``), then the oldest first. A low request therefore waits
  at most two aging periods before it is level with every new ``high`` one, and being older it
  goes before them: nothing waits forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.contracts.request import PRIORITIES, TrainingRequest
from shared.contracts.run import IN_FLIGHT, RunRecord
from shared.contracts.vm_sizes import VM_SIZES
from shared.settings import Settings, TeamQuota

TOP = len(PRIORITIES) - 1
# A deferred request that has not come back for this many deferral delays is not held in the line
# (its message is late, not lost: when it comes back, it takes its place again).
LINE_STALE_DELAYS = 10


def level(record: RunRecord, now: datetime, aging_s: float) -> int:
    """The record's place in the line: its priority's level, aged one up per ``aging_s`` waited."""
    assert record.request is not None  # only recorded requests wait
    base = PRIORITIES.index(record.request.priority)
    waited = max(0.0, (now - record.created_at).total_seconds())
    return min(TOP, base + int(waited // aging_s))


def line_key(record: RunRecord, now: datetime, aging_s: float) -> tuple[int, datetime, str]:
    """Sorts the line: the highest level first, then the oldest, then by id (a total order)."""
    return (-level(record, now, aging_s), record.created_at, record.request_id)


def in_line(record: RunRecord, now: datetime, defer_delay_s: float) -> bool:
    """Whether a deferred record holds its place: not canceled, and last deferred recently."""
    if record.cancel_requested or record.request is None:
        return False
    return now - record.updated_at <= timedelta(seconds=LINE_STALE_DELAYS * defer_delay_s)


def run_gpus(request: TrainingRequest, backend: str | None, settings: Settings) -> int:
    """The GPUs a run holds: its compute shape's, or the default Azure ML clusters'."""
    compute = request.compute
    if compute.head is not None or compute.workers is not None:
        return compute.total_gpus()
    if backend == "azureml":
        return (
            VM_SIZES[settings.head_vm_size].gpus
            + VM_SIZES[settings.worker_vm_size].gpus * settings.worker_node_count
        )
    return 0


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s day: GPU-hours per day count from here."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class TeamUse:
    """What a team holds now: runs in flight and GPU-hours used today (UTC)."""

    in_flight: int
    gpu_hours: float


def team_use(records: Iterable[RunRecord], now: datetime, settings: Settings) -> TeamUse:
    """From :meth:`shared.ports.RunStore.team_runs` (since :func:`day_start`)."""
    since, flying, hours = day_start(now), 0, 0.0
    for r in records:
        if r.state in IN_FLIGHT:
            flying += 1
        if r.request is None or r.submitted_at is None:
            continue  # never given compute
        start = max(r.submitted_at, since)
        end = now if r.state in IN_FLIGHT else (r.finished_at or r.updated_at)
        if end > start:
            hours += run_gpus(r.request, r.backend, settings) * (end - start).total_seconds() / 3600
    return TeamUse(flying, hours)


def team_problem(team: str, quota: TeamQuota, use: TeamUse, *, gpus: int, joining: bool = True) -> str | None:
    """Why ``team`` may not start this run now (``waiting for team quota: …``), or None.

    ``joining``: the run is not counted in ``use`` yet (False: it is, after its claim). A run that
    needs no GPU is not held back by the GPU-hour cap.
    """
    cap, others = quota.max_in_flight, use.in_flight - (0 if joining else 1)
    if cap is not None and others >= cap:
        return f"waiting for team quota: team {team} has {others} of {cap} runs in flight"
    budget = quota.gpu_hours_per_day
    if budget is not None and gpus > 0 and use.gpu_hours >= budget:
        return (
            f"waiting for team quota: team {team} used {use.gpu_hours:.2f} of {budget:g} GPU-hours "
            "today (UTC)"
        )
    return None
