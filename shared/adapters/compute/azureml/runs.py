"""Reading an Azure ML job's run back: its MLflow metrics and tags, the trainer's summary, its progress.

An Azure ML job's name is its MLflow run id. The trainer logs its progress as MLflow metrics and the
head's bootstrap publishes the Ray head's address as a tag on that run (the names:
:mod:`trainer.contract`); :class:`RunReader` is what :mod:`shared.adapters.compute.azureml.v2` reads
them with (:class:`MlflowRunReader` against the workspace, or the twin's in the tests).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.contracts.run import Progress
from trainer import contract

log = logging.getLogger(__name__)

HEAD_ADDRESS_TAG = contract.HEAD_ADDRESS_TAG  # set by trainer/bootstrap.py on the head job's MLflow run


@dataclass(frozen=True)
class RunView:
    """One MLflow run as the poller reads it: latest metric values, the latest step, the tags."""

    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0
    tags: dict[str, str] = field(default_factory=dict)


class RunReader(Protocol):
    """Reads a job's MLflow run (an Azure ML job's name is its MLflow run id)."""

    def get_run(self, run_id: str) -> RunView | None: ...

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The trainer's ``outputs/summary.json`` artifact, when there."""


class MlflowRunReader:
    """:class:`RunReader` on ``mlflow`` + ``azureml-mlflow`` against the workspace's tracking URI."""

    def __init__(self, ml_client: Any) -> None:
        self._ml_client = ml_client
        self._client: Any = None
        self._lock = threading.Lock()

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                ws = self._ml_client.workspaces.get(self._ml_client.workspace_name)
                self._client = MlflowClient(tracking_uri=ws.mlflow_tracking_uri)
            return self._client

    def get_run(self, run_id: str) -> RunView | None:
        try:
            run = self._mlflow().get_run(run_id)
        except Exception as err:
            if "RESOURCE_DOES_NOT_EXIST" in str(err) or "not found" in str(err).lower():
                return None
            raise
        metric_objs = getattr(run.data, "_metric_objs", None) or []
        step = max((int(getattr(m, "step", 0) or 0) for m in metric_objs), default=0)
        return RunView(metrics=dict(run.data.metrics), step=step, tags=dict(run.data.tags))

    def summary(self, run_id: str) -> dict[str, Any] | None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rlq-aml-") as tmp:
            try:
                path = self._mlflow().download_artifacts(run_id, "outputs/summary.json", tmp)
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except Exception as err:  # noqa: BLE001 - the metrics still give the essentials
                log.info("job %s: no readable summary.json (%s)", run_id, type(err).__name__)
                return None
        return data if isinstance(data, dict) else None


def _progress(view: RunView) -> Progress | None:
    """A run's progress from the MLflow metrics the trainer logs (names: :mod:`trainer.contract`)."""
    m: Mapping[str, float] = view.metrics
    if contract.METRIC_REWARD_MEAN not in m and contract.METRIC_TIMESTEPS not in m:
        return None
    reward = m.get(contract.METRIC_REWARD_MEAN)
    episodes = m.get(contract.METRIC_EPISODES_TOTAL)
    return Progress(
        iteration=int(view.step),
        timesteps=int(m.get(contract.METRIC_TIMESTEPS, 0) or 0),
        time_total_s=float(m.get(contract.METRIC_TIME_TOTAL_S, 0.0) or 0.0),
        episode_reward_mean=reward if reward is None or math.isfinite(reward) else None,
        episodes_total=int(episodes) if episodes is not None else None,
    )
