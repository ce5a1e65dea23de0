"""Where per-iteration metrics go: metrics.jsonl (always), MLflow (when ``MLFLOW_TRACKING_URI`` is set).

MLflow is what Azure ML (SDK v2) jobs track with: Azure ML sets ``MLFLOW_TRACKING_URI`` and
``MLFLOW_RUN_ID`` in every job, and the backend reads the metric names of
:data:`trainer.contract.PROGRESS_METRICS` back from the job's run. MLflow is imported lazily; a
missing package or a failing remote never stops training (a single warning goes to stderr).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from trainer.contract import STEP_KEY, mlflow_metric_name


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
            import mlflow
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
            mlflow_metric_name(k): float(v)
            for k, v in row.items()
            if k != STEP_KEY and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        try:
            self.mlflow.log_metrics(metrics, step=int(row.get(STEP_KEY, 0)))
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
        mlflow_sink = MLflowSink.create()
        if mlflow_sink is not None:
            sinks.append(mlflow_sink)
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
