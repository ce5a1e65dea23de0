"""Runs of a model completed without training: each registers a version through the core's own rule
(:class:`shared.core.models.Champions`), its evaluation given, the champion's replayed on the same
episodes (a fixed checkpoint scores the same on the same seeds). The surfaces' tests read what it
leaves: the API, the CLI, the client and the dashboard."""

from __future__ import annotations

from shared.contracts.models import Evaluation, ModelSection
from shared.contracts.parsing import parse_request
from shared.contracts.run import RunRecord, RunState
from shared.contracts.trainer import ModelEval, TrainerSummary
from shared.core.service import TrainingService

EPISODES = 20


def evaluation(mean: float, std: float = 5.0) -> Evaluation:
    return Evaluation(
        episodes=EPISODES,
        mean=mean,
        std=std,
        min=mean - 2 * std,
        max=mean + 2 * std,
        seeds=list(range(EPISODES)),
    )


def complete(
    service: TrainingService,
    request_id: str,
    *,
    mean: float,
    std: float = 5.0,
    model: str = "cartpole",
    promote: str = "if_better",
) -> ModelSection:
    """Register run ``request_id`` of ``model`` as if it completed with an evaluation of ``mean`` ± ``std``."""
    champions = service.core.champions()
    assert champions is not None, "the run store keeps no model registry"
    current = champions.champion(model)
    request = parse_request(
        {"request_id": request_id, "env": "CartPole-v1", "model": model, "promote": promote}
    )
    record = RunRecord(
        request_id=request_id,
        request=request,
        state=RunState.completed,
        backend="twin",
        run_id=f"job-{request_id}",
    )
    summary = TrainerSummary(
        algorithm="IMPALA",
        env="CartPole-v1",
        checkpoint_path=f"file:///data/runs/{request_id}/checkpoints/final",
        model_eval=ModelEval(
            candidate=evaluation(mean, std),
            champion=current.candidate if current is not None else None,
            champion_version=current.version if current is not None else None,
        ),
    )
    section = champions.register(record, summary)
    assert section is not None
    if section.event_id is not None:  # as the run's outbox does before its completion message
        champions.publish(model, section.event_id)
    return section
