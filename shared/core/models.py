"""Models and champions: the promotion rule, and the registry's writes that follow it.

:func:`decide` is the rule, a pure function (docs/models.md states it):

* a model with no champion: its first version becomes champion (unless ``promote`` is ``never``);
* ``always``: the version becomes champion; ``never``: it does not;
* ``if_better``: it becomes champion when its evaluation **beats** the champion's on the same
  episodes **by at least** ``min_improvement``::

      candidate.mean > champion.mean  and  candidate.mean - champion.mean >= min_improvement

  With ``min_improvement`` 0 an equal mean keeps the champion. Without both evaluations, or when
  the champion changed while the run trained (it was judged against another version), the
  champion is kept: a candidate is only ever promoted over the champion it was played against.

:class:`Champions` applies it through the :class:`shared.ports.ModelRegistry`: every write is
conditional on the model's etag and re-decided on a conflict, so runs of one model completing at
once yield one history (one champion per change, no version lost); registration is idempotent on
the run. Each champion change is a :class:`PromotionEvent` in the model's history, published to the
topic (``model-promoted``, :func:`shared.contracts.message_ids.promoted`) by its one owner: the
outbox of the run the rule crowned, before that run's completion message, or the person's call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from shared.contracts import message_ids
from shared.contracts.models import (
    MAX_HISTORY,
    Evaluation,
    Model,
    ModelSection,
    ModelVersion,
    PromotedBy,
    PromotionEvent,
    PromotionRule,
)
from shared.contracts.request import Champion, TrainingRequest
from shared.contracts.run import RunRecord
from shared.contracts.trainer import TrainerSummary
from shared.errors import Conflict, InvalidRequest, NotFound, TransientError
from shared.ports import ModelRegistry, Publisher

log = logging.getLogger(__name__)

MAX_SAVE_ATTEMPTS = 16


def decide(
    rule: PromotionRule,
    *,
    min_improvement: float,
    champion_version: int | None,
    candidate: Evaluation | None,
    champion: Evaluation | None,
    judged_against: int | None,
) -> tuple[bool, str]:
    """Whether a new version becomes champion, and why in one sentence.

    ``champion_version``: the model's champion now (None: it has none); ``judged_against``: the
    champion the candidate was played against (its ``champion`` evaluation is of that version).
    """
    if rule == "never":
        return False, "promote is 'never': registered, not promoted"
    if champion_version is None:
        return True, "the model's first champion"
    if rule == "always":
        return True, f"promote is 'always': replaces v{champion_version}"
    if candidate is None:
        return False, f"kept the champion v{champion_version}: the candidate has no evaluation"
    if judged_against == champion_version and champion is None:
        return False, f"kept the champion v{champion_version}: it could not be played against the candidate"
    if judged_against != champion_version or champion is None:
        against = "no champion" if judged_against is None else f"v{judged_against}"
        return False, (
            f"kept the champion v{champion_version}: the candidate was played against {against}, "
            "not against the champion now"
        )
    margin = candidate.mean - champion.mean
    if candidate.mean > champion.mean and margin >= min_improvement:
        return True, (
            f"promoted: {candidate.mean:g} beats v{champion_version}'s {champion.mean:g} by {margin:g} "
            f"(at least {min_improvement:g} needed)"
        )
    return False, (
        f"kept the champion v{champion_version}: {candidate.mean:g} against its {champion.mean:g} "
        f"(a mean above it by at least {min_improvement:g} was needed)"
    )


class Champions:
    """The model registry's writes, by the rule: register, promote, roll back, resolve ``model://``."""

    def __init__(
        self,
        registry: ModelRegistry,
        publisher: Callable[[], Publisher],
        clock: Callable[[], datetime],
    ) -> None:
        self.registry = registry
        self._publisher = publisher  # read at each call: a publisher swapped on the core is the one used
        self.clock = clock

    # --- a run completed ----------------------------------------------------------------------

    def register(self, record: RunRecord, summary: TrainerSummary) -> ModelSection | None:
        """Register ``record``'s completed run as a version of its model and decide the champion.

        None when there is nothing to register (no request, no checkpoint). Idempotent on the run:
        a second call answers the first decision.
        """
        request = record.request
        if request is None or not summary.checkpoint_path:
            return None
        name = request.model_name
        evaluation = summary.model_eval
        judged_against = (
            evaluation.champion_version
            if evaluation is not None and evaluation.champion_version is not None
            else (request.champion.version if request.champion else None)
        )
        for _ in range(MAX_SAVE_ATTEMPTS):
            model = self.registry.get_model(name) or Model(name=name, created_at=self.clock())
            existing = self.registry.find_version(name, record.request_id)
            if existing is not None:
                return self._section(model, existing)
            promoted, reason = decide(
                request.promote,
                min_improvement=request.min_improvement,
                champion_version=model.champion_version,
                candidate=evaluation.candidate if evaluation else None,
                champion=evaluation.champion if evaluation else None,
                judged_against=judged_against,
            )
            version = ModelVersion(
                model=name,
                version=model.latest_version + 1,
                request_id=record.request_id,
                run_id=record.run_id,
                backend=record.backend,
                checkpoint_path=summary.checkpoint_path,
                algorithm=request.algorithm,
                env=request.env,
                candidate=evaluation.candidate if evaluation else None,
                champion_version=judged_against,
                champion=evaluation.champion if evaluation else None,
                rule=request.promote,
                min_improvement=request.min_improvement,
                promoted=promoted,
                reason=reason,
                created_at=self.clock(),
            )
            changed = model.model_copy(update={"latest_version": version.version, "updated_at": self.clock()})
            if promoted:
                changed = self._crown(changed, version, by="rule", reason=reason)
            try:
                stored = self.registry.save_model(changed, new_version=version)
            except Conflict:
                continue  # another run of this model (or this one, again) wrote first: decide anew
            log.info("model %s: v%d (%s) %s", name, version.version, record.request_id, reason)
            return self._section(stored, version)
        raise TransientError(f"model {name!r} kept changing under us; the next poll registers the run")

    # --- a person's decision ------------------------------------------------------------------

    def promote(self, name: str, version: int, *, reason: str) -> PromotionEvent | None:
        """Make ``version`` the champion (a person's decision, recorded with ``reason``); None when
        it is the champion already. Publishes the event (TransientError: recorded, not yet
        published; the same call again publishes it)."""
        return self._set_champion(name, lambda model: version, reason=reason)

    def rollback(self, name: str, *, reason: str) -> PromotionEvent | None:
        """Make the champion before the current one champion again (a person's decision)."""

        def previous(model: Model) -> int:
            current = model.history[-1] if model.history else None
            if current is None or current.from_version is None:
                raise InvalidRequest(
                    [{"field": "model", "message": f"model {name!r} has no earlier champion to roll back to"}]
                )
            return current.from_version

        return self._set_champion(name, previous, reason=reason)

    def _set_champion(
        self, name: str, choose: Callable[[Model], int], *, reason: str
    ) -> PromotionEvent | None:
        if not reason.strip():
            raise InvalidRequest(
                [{"field": "reason", "message": "a reason is required: say why, in a sentence"}]
            )
        for _ in range(MAX_SAVE_ATTEMPTS):
            model = self.registry.get_model(name)
            if model is None:
                raise NotFound(f"no model {name!r}")
            target = choose(model)
            chosen = self.registry.get_version(name, target)
            if chosen is None:
                raise NotFound(f"model {name!r} has no version {target}; it has 1 to {model.latest_version}")
            if model.champion_version == target:
                last = model.history[-1] if model.history else None
                if last is not None and last.to_version == target and last.by == "person":
                    self.publish(name, last.message_id)  # the same decision again: its event, if it was lost
                return None
            changed = self._crown(
                model.model_copy(update={"updated_at": self.clock()}), chosen, by="person", reason=reason
            )
            try:
                stored = self.registry.save_model(changed)
            except Conflict:
                continue
            log.info("model %s: v%d made champion by a person: %s", name, target, reason)
            event = stored.history[-1]
            self.publish(name, event.message_id)  # TransientError: recorded; asking again publishes it
            return event
        raise TransientError(f"model {name!r} kept changing under us; try again")

    # --- reading ------------------------------------------------------------------------------

    def champion(self, name: str) -> ModelVersion | None:
        """The champion version of ``name`` (None: no such model, or no champion yet)."""
        model = self.registry.get_model(name)
        if model is None or model.champion_version is None:
            return None
        return self.registry.get_version(name, model.champion_version)

    def with_champion(self, request: TrainingRequest) -> TrainingRequest:
        """``request`` with its model's champion now (set by rlq at intake; a producer's replaced).

        ``restore_from: model://<name>`` becomes ``rlq://<the champion's request id>`` (resolved
        on like any ``rlq://``); a model without a champion is refused naming ``restore_from``.
        """
        current = self.champion(request.model_name)
        champion = (
            Champion(version=current.version, checkpoint_path=current.checkpoint_path) if current else None
        )
        changes: dict[str, object] = {"champion": champion}
        wanted = request.restore_model
        if wanted is not None:
            source = current if wanted == request.model_name else self.champion(wanted)
            if source is None:
                why = "no such model" if self.registry.get_model(wanted) is None else "it has no champion yet"
                raise InvalidRequest(
                    [
                        {
                            "field": "restore_from",
                            "message": f"{request.restore_from}: {why}; nothing to warm-start from",
                        }
                    ]
                )
            changes["restore_from"] = f"rlq://{source.request_id}"
        if changes == {"champion": request.champion}:
            return request
        return TrainingRequest.model_validate({**request.model_dump(), **changes})

    # --- the topic ----------------------------------------------------------------------------

    def publish(self, name: str, message_id: str) -> bool:
        """Publish the champion change ``message_id`` of ``name`` (from its history, with the
        evaluations of the version it crowned); False when the history no longer holds it.

        Each change has one publisher: the outbox of the run whose version the rule crowned (before
        its completion message, again on each tick until that is recorded), or the person's call
        that made it. The broker drops a repeat of its id (a retry after a crash or a lost answer).
        """
        model = self.registry.get_model(name)
        event = next((e for e in model.history if e.message_id == message_id), None) if model else None
        if event is None:
            log.warning(
                "model %s: champion change %s is no longer in its history; not published", name, message_id
            )
            return False
        self._publisher().publish_event(self._full(event))  # TransientError: the caller retries
        return True

    # --- internals ----------------------------------------------------------------------------

    def _crown(
        self,
        model: Model,
        version: ModelVersion,
        *,
        by: PromotedBy,
        reason: str,
    ) -> Model:
        """``model`` with ``version`` its champion and the change at the end of its history (slim:
        the evaluations are on the versions, :meth:`publish` adds them to the event)."""
        sequence = model.promotions + 1
        event = PromotionEvent(
            message_id=message_ids.promoted(model.name, sequence),
            model=model.name,
            sequence=sequence,
            from_version=model.champion_version,
            to_version=version.version,
            by=by,
            reason=reason,
            request_id=version.request_id,
            checkpoint_path=version.checkpoint_path,
            at=self.clock(),
        )
        history = [*model.history, event][-MAX_HISTORY:]
        return model.model_copy(update={"champion_version": version.version, "history": history})

    def _full(self, event: PromotionEvent) -> PromotionEvent:
        """The event as published: with the evaluations of the version it crowned (a rule's
        promotion carries the former champion's on the same episodes too)."""
        version = self.registry.get_version(event.model, event.to_version)
        if version is None:
            return event
        return event.model_copy(
            update={
                "candidate": version.candidate,
                "champion": version.champion if event.by == "rule" else None,
            }
        )

    def _section(self, model: Model, version: ModelVersion) -> ModelSection:
        champion = (
            version
            if model.champion_version == version.version
            else (
                self.registry.get_version(model.name, model.champion_version)
                if model.champion_version
                else None
            )
        )
        event = next((e for e in model.history if e.to_version == version.version and e.by == "rule"), None)
        return ModelSection(
            name=model.name,
            version=version.version,
            candidate=version.candidate,
            champion=version.champion,
            champion_version_before=version.champion_version,
            promoted=version.promoted,
            reason=version.reason,
            champion_version=model.champion_version,
            champion_checkpoint=champion.checkpoint_path if champion else None,
            event_id=event.message_id if version.promoted and event else None,
        )
