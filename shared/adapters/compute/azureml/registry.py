"""The champion in the Azure ML workspace's model registry (``azure-ai-ml`` ``Model`` assets).

When a model's champion changes (a run's promotion, a person's promote or rollback) and its
checkpoint is an Azure ML job output, :meth:`AzureMLModelRegistry.register_champion` makes the
workspace say so:

* **The version.** A ``custom_model`` asset named after the rlq model, with rlq's version number
  as its Azure ML version, its path the job output URI the backend reported
  (``azureml://jobs/<job>/outputs/checkpoints/paths/final``), tagged with the request id, the job,
  the algorithm and environment, and the evaluation that judged it (candidate and champion means,
  spreads, episodes, the rule and its reason). A version that is already there with that path is
  adopted (a retried registration, or a rollback to a former champion); one with another path is
  reported, never overwritten (Azure ML versions are immutable but for description and tags).
* **The champion.** Azure ML resolves one label for models, ``latest`` (the most recently created
  version; azure-ai-ml ``ModelOperations._managed_label_resolver``), which a rollback cannot move;
  and only ``description`` and ``tags`` of a version can be updated after it is created (Learn,
  "Work with models in Azure Machine Learning", *Update*). So the champion carries the tag
  ``rlq_champion=true``: set on the new champion first, then removed from every other version, so
  a crash in between leaves two tagged versions (the retry fixes it), never none.

It never pretends: a checkpoint that is not an Azure ML job output (another backend's) is refused
naming ``checkpoint_path``; SDK errors are translated by :mod:`.errors` (HTTP 409/429/5xx retried,
the rest permanent). rlq's own registry (:class:`shared.ports.ModelRegistry`, in the run store) stays
the authority; this is its mirror where Azure ML users look.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.adapters.compute.azureml.errors import sdk_errors
from shared.adapters.compute.azureml.jobs import RUN_TAG
from shared.adapters.compute.azureml.v2 import ml_client_from_settings
from shared.contracts.models import Evaluation, ModelVersion
from shared.errors import PermanentError
from shared.settings import Settings

log = logging.getLogger(__name__)

CHAMPION_TAG = "rlq_champion"
JOB_OUTPUT_RE = re.compile(r"^azureml://jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)(?:/paths/.*)?$")


@dataclass(frozen=True)
class Registration:
    """What :meth:`AzureMLModelRegistry.register_champion` did in the workspace."""

    name: str
    version: str  # the Azure ML version (rlq's version number)
    path: str  # the job output URI the version points at
    created: bool  # False: the version was there already (adopted)
    cleared: tuple[str, ...]  # versions whose champion tag was removed


def _evaluation_tags(prefix: str, evaluation: Evaluation | None) -> dict[str, str]:
    if evaluation is None:
        return {}
    return {
        f"rlq_{prefix}_mean": repr(evaluation.mean),
        f"rlq_{prefix}_std": repr(evaluation.std),
        f"rlq_{prefix}_min": repr(evaluation.min),
        f"rlq_{prefix}_max": repr(evaluation.max),
        f"rlq_{prefix}_episodes": str(evaluation.episodes),
    }


def version_tags(version: ModelVersion) -> dict[str, str]:
    """The tags a registered version carries (all strings, as Azure ML keeps them)."""
    tags = {
        RUN_TAG: version.request_id,
        "rlq_model": version.model,
        "rlq_version": str(version.version),
        "rlq_rule": version.rule,
        "rlq_min_improvement": repr(version.min_improvement),
        "rlq_reason": version.reason,
        **_evaluation_tags("candidate", version.candidate),
        **_evaluation_tags("champion", version.champion),
    }
    optional = {
        "rlq_job": version.run_id,
        "rlq_algorithm": version.algorithm,
        "rlq_env": version.env,
        "rlq_judged_against": str(version.champion_version) if version.champion_version else None,
    }
    tags.update({k: v for k, v in optional.items() if v})
    return tags


def job_output(checkpoint_path: str) -> tuple[str, str]:
    """(job, output) of an Azure ML job output URI; PermanentError naming ``checkpoint_path`` otherwise."""
    m = JOB_OUTPUT_RE.match(checkpoint_path or "")
    if m is None:
        raise PermanentError(
            f"checkpoint_path {checkpoint_path!r} is not an Azure ML job output "
            "(azureml://jobs/<job>/outputs/<output>/paths/...): only checkpoints of RLQ_BACKEND=azureml runs "
            "are registered in the workspace",
            reason="NotAnAzureMLCheckpoint",
        )
    return m["job"], m["output"]


class AzureMLModelRegistry:
    """Registers champions as ``Model`` assets in the workspace (``ml_client.models``)."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        ml_client: Any = None,
        ml_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        """``ml_client``, or ``ml_client_factory`` (the backend's own, built on first use), or the
        workspace of ``settings``."""
        if ml_client_factory is None:
            if ml_client is None and settings is None:
                raise ValueError("AzureMLModelRegistry needs an ml_client, a factory of one, or settings")
            ml_client_factory = (
                (lambda: ml_client)
                if ml_client is not None
                else (
                    lambda: ml_client_from_settings(settings)  # type: ignore[arg-type]  # checked above
                )
            )
        self._factory = ml_client_factory

    @property
    def ml_client(self) -> Any:
        return self._factory()

    def build_model(self, version: ModelVersion) -> Any:
        """The ``Model`` entity of one rlq version (what ``models.create_or_update`` is handed)."""
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        job_output(version.checkpoint_path)
        what = " on ".join(x for x in (version.algorithm, version.env) if x) or "policy"
        return Model(
            name=version.model,
            version=str(version.version),
            type=AssetTypes.CUSTOM_MODEL,
            path=version.checkpoint_path,
            description=f"rlq {what}: the checkpoint of run {version.request_id}",
            tags=version_tags(version),
        )

    def register_champion(self, version: ModelVersion) -> Registration:
        """Make ``version`` the workspace's champion of its model: registered (or adopted), then
        tagged ``rlq_champion=true`` and the tag taken off every other version. Idempotent."""
        entity = self.build_model(version)
        name, number = version.model, str(version.version)
        ml = self.ml_client
        created = False
        existing = self._get(name, number)
        if existing is None:
            try:
                with sdk_errors(f"register model {name} version {number}"):
                    existing = ml.models.create_or_update(entity)
                created = True
            except Exception:
                # a racing registration may have created it: adopt it if it is ours, else re-raise
                existing = self._get(name, number)
                if existing is None:
                    raise
        if str(existing.path) != version.checkpoint_path:
            raise PermanentError(
                f"Azure ML model {name} version {number} is another checkpoint ({existing.path}), "
                f"not {version.checkpoint_path}: versions are immutable; it was left as it is",
                reason="AzureMLModelVersionTaken",
            )
        cleared = self.mark_champion(name, number, current=existing)
        log.info(
            "Azure ML model %s: version %s is the champion (%s; tag cleared on %s)",
            name,
            number,
            "registered" if created else "already registered",
            ", ".join(cleared) or "none",
        )
        return Registration(name, number, version.checkpoint_path, created, tuple(cleared))

    def mark_champion(self, name: str, version: str, *, current: Any = None) -> list[str]:
        """Tag ``version`` as the champion, then untag every other version; the untagged versions."""
        ml = self.ml_client
        target = current if current is not None else self._get(name, version)
        if target is None:
            raise PermanentError(
                f"Azure ML model {name} has no version {version} to mark as champion",
                reason="AzureMLNotFound",
            )
        if (target.tags or {}).get(CHAMPION_TAG) != "true":
            target.tags = {**(target.tags or {}), CHAMPION_TAG: "true"}
            with sdk_errors(f"tag model {name} version {version} as champion"):
                ml.models.create_or_update(target)
        cleared: list[str] = []
        with sdk_errors(f"list the versions of model {name}"):
            others = [m for m in ml.models.list(name=name) if str(m.version) != version]
        for other in others:
            tags = dict(other.tags or {})
            if tags.pop(CHAMPION_TAG, None) is None:
                continue
            other.tags = tags
            with sdk_errors(f"untag model {name} version {other.version}"):
                ml.models.create_or_update(other)
            cleared.append(str(other.version))
        return cleared

    def champions(self, name: str) -> list[str]:
        """The versions of ``name`` tagged champion in the workspace (one, once a change has finished)."""
        with sdk_errors(f"list the versions of model {name}"):
            return [
                str(m.version)
                for m in self.ml_client.models.list(name=name)
                if (m.tags or {}).get(CHAMPION_TAG) == "true"
            ]

    def _get(self, name: str, version: str) -> Any | None:
        try:
            with sdk_errors(f"read model {name} version {version}"):
                return self.ml_client.models.get(name=name, version=version)
        except PermanentError as err:
            if err.reason == "AzureMLNotFound":
                return None
            raise
