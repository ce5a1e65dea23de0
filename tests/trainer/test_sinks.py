"""Metrics sinks: jsonl always; Azure ML only inside a real run; MLflow only when configured."""

import json
import math
import os
import subprocess
import sys
import types

from trainer import sinks


def test_jsonl_sink_writes_nan_as_null(tmp_path):
    s = sinks.JsonlSink(str(tmp_path / "m.jsonl"))
    s.log({"iteration": 1, "episode_reward_mean": float("nan"), "learner/total_loss": math.inf, "x": 2.5})
    s.close()
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert row == {"iteration": 1, "episode_reward_mean": None, "learner/total_loss": None, "x": 2.5}


def test_azureml_sink_logs_article_metrics_to_a_real_run():
    class FakeRun:  # stands in for azureml.core.Run (not RLlib)
        id = "rlq_123"

        def __init__(self):
            self.logged = []

        def log(self, name, value):
            self.logged.append((name, value))

    run = FakeRun()
    assert not sinks.is_offline_run(run)
    s = sinks.AzureMLSink(run)
    s.log({"iteration": 1, "episode_reward_mean": -20.5, "episodes_total": 7, "timesteps": 100})
    s.log({"iteration": 2, "episode_reward_mean": None, "episodes_total": 9})
    assert run.logged == [("episode_reward_mean", -20.5), ("episodes_total", 7), ("episodes_total", 9)]


def test_azureml_offline_run_is_not_used():
    class _OfflineRun:
        id = "OfflineRun_abc"

    assert sinks.is_offline_run(_OfflineRun())
    # Outside Azure ML, Run.get_context() is an offline run (or azureml-core is absent): no sink.
    assert sinks.AzureMLSink.create() is None


def test_outside_azure_ml_the_sdk_is_not_imported(tmp_path):
    # Every run opens its sinks before Ray starts; outside Azure ML (no AZUREML_RUN_ID) that must
    # not pay for importing azureml.core, installed or not.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZUREML_")}
    code = (
        "import sys; from trainer import sinks; "
        f"s = sinks.Sinks.open({str(tmp_path / 'm.jsonl')!r}); "
        "print([type(x).__name__ for x in s.sinks], 'azureml.core' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["['JsonlSink']", "False"]


def test_inside_azure_ml_the_run_context_is_asked_for(monkeypatch):
    asked = []

    class Run:
        @staticmethod
        def get_context():
            asked.append(True)
            return type("R", (), {"id": "rlq_123", "log": lambda self, name, value: None})()

    core = types.ModuleType("azureml.core")
    core.Run = Run
    monkeypatch.setitem(sys.modules, "azureml.core", core)
    monkeypatch.setenv(sinks.RUN_ID_ENV, "rlq_123")
    sink = sinks.AzureMLSink.create()
    assert asked == [True] and sink is not None and sink.run.id == "rlq_123"


def test_mlflow_only_when_tracking_uri_set(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sinks.MLflowSink.create() is None
    opened = sinks.Sinks.open(str(tmp_path / "m.jsonl"))
    assert [type(s).__name__ for s in opened.sinks] == ["JsonlSink"]
    opened.close()
