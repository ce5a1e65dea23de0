"""Metrics sinks: jsonl always; MLflow only when configured."""

import json
import math
import os
import subprocess
import sys

from trainer import sinks


def test_jsonl_sink_writes_nan_as_null(tmp_path):
    s = sinks.JsonlSink(str(tmp_path / "m.jsonl"))
    s.log({"iteration": 1, "episode_reward_mean": float("nan"), "learner/total_loss": math.inf, "x": 2.5})
    s.close()
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert row == {"iteration": 1, "episode_reward_mean": None, "learner/total_loss": None, "x": 2.5}


def test_outside_azure_ml_the_sdk_is_not_imported(tmp_path):
    # Every run opens its sinks before Ray starts; without MLFLOW_TRACKING_URI that imports no
    # Azure ML SDK (azureml.core, the retired SDK v1, is not used at all).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZUREML_")}
    code = (
        "import sys; from trainer import sinks; "
        f"s = sinks.Sinks.open({str(tmp_path / 'm.jsonl')!r}); "
        "print([type(x).__name__ for x in s.sinks], 'azureml.core' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["['JsonlSink']", "False"]


def test_mlflow_only_when_tracking_uri_set(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sinks.MLflowSink.create() is None
    opened = sinks.Sinks.open(str(tmp_path / "m.jsonl"))
    assert [type(s).__name__ for s in opened.sinks] == ["JsonlSink"]
    opened.close()
