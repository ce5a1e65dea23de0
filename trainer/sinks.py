"""Where per-iteration metrics go: metrics.jsonl (always), Azure ML run, MLflow.

The Azure ML and MLflow integrations are optional and imported lazily; a missing package
or a failing remote never stops training (a single warning goes to stderr).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any


def clean(value: Any) -> Any:
    """NaN/inf -> None recursively, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except Exception:  # noqa: BLE001 - a value that cannot become a float is dropped, not fatal
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(clean(row), allow_nan=False, separators=(",", ":"))


def _warn(msg: str) -> None:
    print(f"rlq-trainer: warning: {msg}", file=sys.stderr, flush=True)


class JsonlSink:
    def __init__(self, path: str, append: bool = False):
        self.path = path
        self._fh = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - held for the run, closed in close()

    def log(self, row: dict[str, Any]) -> None:
        self._fh.write(dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


RUN_ID_ENV = "AZUREML_RUN_ID"  # set by Azure ML in every run's environment (azureml.core.Run._load_scope)


class AzureMLSink:
    """Logs like the article's ``on_train_result`` callback: ``episode_reward_mean`` and
    ``episodes_total`` per iteration, to ``Run.get_context()`` when it is a real run."""

    def __init__(self, run: Any):
        self.run = run
        self._failed = False

    @classmethod
    def create(cls) -> AzureMLSink | None:
        # Azure ML gives every run its context in AZUREML_RUN_ID (and the workspace's AZUREML_ARM_*
        # variables); without it Run.get_context() can only be an offline run. Checked first:
        # importing azureml.core costs about 1.5 CPU seconds of every run's start-up.
        if not os.environ.get(RUN_ID_ENV):
            return None
        try:
            from azureml.core import Run  # type: ignore
        except Exception:  # noqa: BLE001 - an optional integration: any import failure means absent
            return None
        try:
            run = Run.get_context()
        except Exception as exc:  # noqa: BLE001 - depends on the Azure ML environment
            _warn(f"Azure ML run context unavailable: {exc}")
            return None
        if is_offline_run(run):
            return None
        return cls(run)

    def log(self, row: dict[str, Any]) -> None:
        if self._failed:
            return
        try:
            for key in ("episode_reward_mean", "episodes_total"):
                if row.get(key) is not None:
                    self.run.log(key, row[key])
        except Exception as exc:  # noqa: BLE001 - never stop training for a metrics outage
            self._failed = True
            _warn(f"Azure ML logging disabled after an error: {exc}")

    def close(self) -> None:
        try:
            self.run.flush()
        except Exception:  # noqa: BLE001 - closing a metrics sink never fails the run
            pass


def is_offline_run(run: Any) -> bool:
    if type(run).__name__ == "_OfflineRun":
        return True
    rid = str(getattr(run, "id", "") or "")
    return rid.startswith("OfflineRun")


class MLflowSink:
    def __init__(self, mlflow: Any, started: bool):
        self.mlflow = mlflow
        self.started = started
        self._failed = False

    @classmethod
    def create(cls) -> MLflowSink | None:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return None
        try:
            import mlflow  # type: ignore
        except Exception:  # noqa: BLE001 - an optional integration: any import failure means absent
            _warn(
                "MLFLOW_TRACKING_URI is set but the mlflow package is not installed; "
                "metrics go to metrics.jsonl only"
            )
            return None
        try:
            started = False
            if mlflow.active_run() is None:
                mlflow.start_run()
                started = True
            return cls(mlflow, started)
        except Exception as exc:  # noqa: BLE001 - MLflow unavailable is a warning, never fatal
            _warn(f"MLflow unavailable: {exc}")
            return None

    def log(self, row: dict[str, Any]) -> None:
        if self._failed:
            return
        metrics = {
            k.replace("/", "."): float(v)
            for k, v in row.items()
            if k != "iteration"
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        try:
            self.mlflow.log_metrics(metrics, step=int(row.get("iteration", 0)))
        except Exception as exc:  # noqa: BLE001 - never stop training for a metrics outage
            self._failed = True
            _warn(f"MLflow logging disabled after an error: {exc}")

    def close(self) -> None:
        if self.started:
            try:
                self.mlflow.end_run()
            except Exception:  # noqa: BLE001 - closing a metrics sink never fails the run
                pass


class Sinks:
    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    @classmethod
    def open(cls, metrics_path: str, append: bool = False) -> Sinks:
        sinks: list[Any] = [JsonlSink(metrics_path, append=append)]
        for factory in (AzureMLSink.create, MLflowSink.create):
            s = factory()
            if s is not None:
                sinks.append(s)
        return cls(sinks)

    def log(self, row: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log(row)

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing a metrics sink never fails the run
                pass
