"""The end of a run: its terminal state and completion message in one write, then publish, then notify.

The completion message is written to the run record (the outbox) before it is published, and
published again on every poll tick until the publish is recorded; its message id
(``<request_id>:completed``) lets the topic drop a repeat.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

from shared import curves, telemetry
from shared.contracts import message_ids
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.models import ModelSection
from shared.contracts.run import STATUS_OF, TERMINAL, RunRecord, RunState
from shared.contracts.trainer import TrainerSummary
from shared.core.context import Core
from shared.core.records import Records

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, core: Core, records: Records) -> None:
        self.core = core
        self.records = records

    def terminate(
        self, record: RunRecord, *, summary: TrainerSummary | None = None, **changes: Any
    ) -> RunRecord:
        """Terminal state and completion message in one write (the outbox), then publish."""
        # Any: the changes are RunRecord fields of different types, checked by pydantic when stored
        changes.setdefault("finished_at", self.core.clock())
        ended = record.model_copy(update=changes)
        summary = summary or TrainerSummary()
        changes["completion"] = self._completion(ended, summary).model_copy(
            update={"model": self._register(ended, summary)}
        )
        stored = self.records.update(record, **changes)
        if stored.state not in TERMINAL or stored.completion is None:
            return stored  # someone else moved it on first
        self.core.fault("terminal")
        began = stored.submitted_at or stored.created_at
        ran_s = telemetry.seconds_between(began, stored.finished_at)
        telemetry.RUN_DURATION.record(ran_s or 0.0, {telemetry.STATE: stored.state.value})
        self.publish(stored)
        return self.core.store.get(record.request_id) or stored

    def _register(self, ended: RunRecord, summary: TrainerSummary) -> ModelSection | None:
        """A completed run's version of its model and the champion decision (docs/models.md),
        before the terminal write: registration is idempotent on the run, so a retried terminate
        answers the same decision."""
        champions = self.core.champions()
        if champions is None or ended.state is not RunState.completed:
            return None
        return champions.register(ended, summary)  # TransientError: the next poll tries again

    def _completion(self, record: RunRecord, summary: TrainerSummary) -> CompletionMessage:
        req = record.request
        p = record.progress
        began = record.started_at or record.submitted_at
        duration = (record.finished_at - began).total_seconds() if record.finished_at and began else None
        return CompletionMessage(
            message_id=message_ids.completed(record.request_id),
            request_id=record.request_id,
            run_id=record.run_id,
            status=STATUS_OF[record.state],
            stop_reason=record.stop_reason,
            experiment=req.experiment if req else "rlq",
            algorithm=req.algorithm if req else None,
            env=req.env if req else None,
            final_reward=_either(summary.final_reward, p.episode_reward_mean if p else None),
            best_reward=_either(summary.best_reward, curves.best(curves.record_points(record.curve))),
            iterations=_either(summary.iterations, p.iteration if p else None),
            timesteps=_either(summary.timesteps, p.timesteps if p else None),
            duration_s=_either(summary.duration_s, duration),
            checkpoint_path=summary.checkpoint_path,
            parent_request_id=record.parent_request_id,
            eval_reward=summary.eval_reward,
            replay_path=summary.replay_path,
            reward_curve_url=f"{self.core.settings.public_base_url.rstrip('/')}/api/trainings/{record.request_id}/reward.png",
            error=record.error,
            portal_url=record.portal_url,
            tags=req.tags if req else {},
            finished_at=record.finished_at or self.core.clock(),
            simulated=summary.simulated,
            attempts=record.attempt,
        )

    def publish(self, record: RunRecord) -> bool:
        """Publish a recorded completion not yet published; False when there is nothing to publish."""
        if record.completion is None or record.published_at is not None:
            return False
        reply_to = record.request.reply_to if record.request else None
        section, champions = record.completion.model, self.core.champions()
        if section is not None and section.event_id is not None and champions is not None:
            champions.publish(section.name, section.event_id)  # its model-promoted event first
        with telemetry.span(telemetry.PUBLISH, request_id=record.request_id, kind=telemetry.PRODUCER):
            # TransientError: the next tick retries
            self.core.publisher.publish(record.completion, reply_to=reply_to)
        self.core.fault("published")
        self.records.update(record, published_at=self.core.clock(), state=RunState.notified)
        log.info("request %s: completion published (%s)", record.request_id, record.completion.status)
        return True

    def notify(self, message: CompletionMessage) -> list[Delivery]:
        """The topic trigger's call: deliver to webhooks / Teams and record each outcome on the run."""
        record = self.core.store.get(message.request_id)
        if record is not None and self.core.artifacts is not None:
            try:  # the reward curve beside the run's outputs; a picture never blocks a notification
                self.core.artifacts(record)
            except Exception as err:  # noqa: BLE001 - a picture never blocks a notification
                log.warning("could not save the reward curve of %s: %s", message.request_id, err)
        if self.core.notifier is None:
            return []
        started_ns = time.time_ns()
        deliveries = self.core.notifier.deliver(message, record.request if record else None)
        telemetry.record_deliveries(deliveries, started_ns=started_ns)
        if record is not None:
            self.records.update(record, deliveries=deliveries, notified_at=self.core.clock())
        return deliveries


_N = TypeVar("_N", int, float)


def _either(reported: _N | None, fallback: _N | None) -> _N | None:
    """The trainer's own figure when its summary has one, else what rlq saw of the run."""
    return reported if reported is not None else fallback
