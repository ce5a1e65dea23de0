"""The model registry's contracts: named models, their versions, the champion, and how it changed.

A request names the model it trains (``model``, by default its ``experiment``). Each run of that
model that completes with a checkpoint registers one :class:`ModelVersion`; a :class:`Model` has at
most one champion. At the end of the run the trainer plays the candidate and the champion's
checkpoint on the same greedy episodes (same environment, ``env_config``, seeds, N episodes) and
reports both as :class:`Evaluation`; the core's policy (``shared/core/models.py``) decides by the
request's :data:`PromotionRule`. The decision travels in the completion message
(:class:`ModelSection`) and, when the champion changed, as a ``model-promoted`` event on the topic
(:class:`PromotionEvent`, message id from :mod:`shared.contracts.message_ids`). A person may set
the champion too (promote a version, or roll back), recorded with a reason, by ``"person"``.

Storage (:class:`shared.ports.ModelRegistry`): one :class:`Model` row per name, written only
conditionally on its :attr:`Model.etag`, and one row per version, written in the same atomic step as
the model row that counts it. The decision is made by the core, never by a store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.contracts.base import Strict, utcnow

# ``promote`` in a request: how a completed run's version may take the champion's place.
#   if_better: its evaluation mean beats the champion's by at least ``min_improvement`` (strictly:
#              candidate.mean > champion.mean + min_improvement, see shared/core/models.py);
#   always:    it becomes champion whatever the evaluation;
#   never:     it is registered and never becomes champion by itself (a person may promote it).
# The first version of a model becomes champion under every rule but "never".
PromotionRule = Literal["if_better", "always", "never"]
PROMOTION_RULES: tuple[PromotionRule, ...] = ("if_better", "always", "never")
# Who changed the champion: the request's rule at a run's completion, or a person (promote / rollback).
PromotedBy = Literal["rule", "person"]
# The topic event's name (its ``event`` field and the message's subject / application property).
MODEL_PROMOTED: Literal["model-promoted"] = "model-promoted"
# ``restore_from: model://<name>``: the champion's run of that model, resolved at intake.
MODEL_SCHEME = "model://"
# Episodes of the champion comparison when the request names none, and their bounds.
DEFAULT_EVAL_EPISODES = 20
MAX_EVAL_EPISODES = 200
# Champion changes kept on a model (its ``history``), newest last; older ones drop off. Kept slim
# (no evaluations: those are on the versions), so a model stays one small row in any store.
MAX_HISTORY = 50


class Evaluation(Strict):
    """Greedy episodes of one policy: the undiscounted returns' mean, spread and range.

    Candidate and champion of one decision are played on the same episodes: same environment,
    same ``env_config``, the same ``seeds`` (one per episode, in order), exploration off.
    """

    episodes: int = Field(ge=1)  # how many episodes were played (== len(seeds))
    mean: float  # mean return over those episodes
    std: float = Field(ge=0)  # population standard deviation of the returns
    min: float  # lowest episode return
    max: float  # highest episode return
    seeds: list[int] = Field(default_factory=list)  # the env reset seed of each episode, in order


class ModelVersion(Strict):
    """One completed run registered under a model, with the evaluation that judged it."""

    model: str  # the model's name
    version: int = Field(ge=1)  # 1, 2, … in order of registration
    request_id: str  # the run that produced it (its record and completion message)
    run_id: str | None = None  # the backend's job id
    backend: str | None = None  # where its checkpoint lives (``restore_from`` stays on that backend)
    checkpoint_path: str  # the run's final checkpoint URI, as its backend reported it
    algorithm: str | None = None
    env: str | None = None
    # The candidate's evaluation; None when the run produced none (then it can only be champion as
    # the first version, or by ``always`` / a person).
    candidate: Evaluation | None = None
    # The champion the candidate was played against, on the same episodes (None: there was none).
    champion_version: int | None = None
    champion: Evaluation | None = None
    rule: PromotionRule = "if_better"  # the request's ``promote``
    min_improvement: float = 0.0  # the request's ``min_improvement``
    promoted: bool = False  # it became champion when it was registered
    reason: str = ""  # why it was (not) promoted, in a sentence
    created_at: datetime = Field(default_factory=utcnow)


class PromotionEvent(Strict):
    """The champion of a model changed: the ``model-promoted`` topic event, and one entry of the
    model's :attr:`Model.history` (a rule's promotion, a person's promote or rollback)."""

    event: Literal["model-promoted"] = MODEL_PROMOTED
    message_id: str  # ``message_ids.promoted(model, sequence)``: the broker keeps one of each
    model: str
    sequence: int = Field(ge=1)  # 1 for the model's first champion, +1 per change
    from_version: int | None = None  # the champion before (None: the model had none)
    to_version: int  # the champion now
    by: PromotedBy
    reason: str  # the rule's reason, or the person's
    request_id: str | None = None  # the run of ``to_version``
    checkpoint_path: str | None = None  # ``to_version``'s checkpoint
    candidate: Evaluation | None = None  # ``to_version``'s evaluation when it was registered
    champion: Evaluation | None = None  # the former champion's, on the same episodes (rule only)
    at: datetime = Field(default_factory=utcnow)


class Model(Strict):
    """A named model: its champion and how many versions it has. Versions are stored beside it.

    ``etag`` guards every write (:meth:`shared.ports.ModelRegistry.save`): 0 for a model not yet
    stored; the store answers with the next one, and refuses a write made on a stale one.
    """

    name: str
    champion_version: int | None = None  # at most one champion; None before the first
    latest_version: int = 0  # the number of the newest version (0: none yet)
    history: list[PromotionEvent] = Field(default_factory=list)  # champion changes, oldest first
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    etag: int = 0

    @property
    def promotions(self) -> int:
        """The sequence number of the latest champion change (0: never had a champion)."""
        return self.history[-1].sequence if self.history else 0


class ModelSection(Strict):
    """The completion message's ``model`` section: what the run did to its model."""

    name: str
    version: int  # the version this run registered
    candidate: Evaluation | None = None  # this run's evaluation
    champion: Evaluation | None = None  # the champion's, on the same episodes (None: there was none)
    champion_version_before: int | None = None  # the champion it was played against (None: none)
    promoted: bool  # this run's version is now the champion
    reason: str  # why, in a sentence ("promoted: 187.3 > 150.2 + 0" / "kept the champion: …")
    champion_version: int | None = None  # the champion after the decision
    champion_checkpoint: str | None = None  # the champion's checkpoint after the decision
    event_id: str | None = None  # the ``model-promoted`` event's message id when it was promoted


# --- the API's bodies (functions/http_api.py, shared/client.py) --------------------------------------

MAX_REASON_CHARS = 500  # a person's reason for a promote or rollback, recorded in the model's history


class PromoteBody(Strict):
    """``POST /api/models/{name}/promote``: make ``version`` the champion, and say why."""

    version: int = Field(ge=1, strict=True)
    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)


class RollbackBody(Strict):
    """``POST /api/models/{name}/rollback``: the champion before the current one again, and why."""

    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)


class ModelDetail(Strict):
    """``GET /api/models/{name}`` (and the answer to a promote or rollback): the model with its
    history, its champion version, and its versions newest first."""

    model: Model
    champion: ModelVersion | None = None
    versions: list[ModelVersion] = Field(default_factory=list)
