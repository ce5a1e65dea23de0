"""The service end to end on the Azure ML backend, with the workspace twinned.

Real: the orchestration core, SQLite store and broker, the Azure ML backend (its estimator, its
provisioning configuration, its status mapping). Twinned: the Azure ML workspace's endpoints
(``AzureMLTwin``), driven step by step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.adapters.azureml.twin import AzureMLTwin
from shared.adapters.azureml.v1 import RUN_TAG, AzureMLRayBackend
from shared.adapters.sqlite_broker import SqliteBroker
from shared.composition import Wiring, build
from shared.models import Delivery, RunState
from shared.settings import Settings
from tests.support.topics import drain_topic

PONG = {
    "experiment": "pong",
    "algorithm": "IMPALA",
    "env": "PongNoFrameskip-v4",
    "stop": {"episode_reward_mean": 18, "time_total_s": 3600},
}


class Notifier:
    def deliver(self, message, request):
        return [Delivery(target="https://hooks.example.com/x", ok=True, attempts=1, status_code=200)]


@pytest.fixture
def twin() -> AzureMLTwin:
    return AzureMLTwin(subscription_id="sub-1", resource_group="rg-1", workspace="ws-1")


@pytest.fixture
def wired(tmp_path: Path, twin: AzureMLTwin, clock) -> Wiring:
    settings = Settings(
        data_dir=tmp_path / "rlq",
        backend="azureml",
        azureml_subscription_id="sub-1",
        azureml_resource_group="rg-1",
        azureml_workspace="ws-1",
        azureml_vnet="rlq-vnet",
        azureml_subnet="aml",
        max_in_flight=10,
        stall_timeout_s=3600,
        _env_file=None,
    )
    settings.data_dir.mkdir(parents=True)
    backend = AzureMLRayBackend(settings=settings, gateway=twin, network_factory=twin.network)
    broker = SqliteBroker(settings.data_dir / "queue.sqlite3", clock=clock.epoch)
    w = build(
        settings, compute={"azureml": backend}, notifier=Notifier(), broker=broker, clock=clock, faults=None
    )
    yield w
    backend.close()


completions = drain_topic  # the completion messages the topic received, drained


def test_request_to_completion_through_azure_ml(wired: Wiring, twin: AzureMLTwin, clock) -> None:
    body = json.dumps({**PONG, "request_id": "pong-1", "reply_to": "replies"}).encode()
    rec = wired.service.intake(body, message_id="m-1")
    assert rec.state is RunState.submitted
    [run] = twin.runs_for("pong-1")
    assert rec.run_id == run.id and run.tags[RUN_TAG] == "pong-1"
    assert set(twin.provisioning_configs) == {"head-gpu", "worker-cpu"}

    # Azure ML provisions and starts the run; the poller follows
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    twin.run_to(run.id, "Running")
    wired.service.poll_once()
    assert wired.service.get("pong-1").state is RunState.running
    for i, reward in enumerate([-20.5, -3.0, 12.0, 18.3]):
        twin.log_iteration(run.id, reward=reward, episodes=50 * (i + 1))
        clock.advance(60)
        wired.service.poll_once()
    rec = wired.service.get("pong-1")
    assert rec.progress.iteration == 4 and rec.progress.episode_reward_mean == 18.3

    twin.write_outputs(
        run.id,
        {
            "outputs/summary.json": {"stop_reason": "reward_reached", "timesteps": 1_500_000},
            "outputs/checkpoints/final/rllib_checkpoint.json": "{}",
        },
    )
    twin.run_to(run.id, "Completed")
    wired.service.poll_once()

    rec = wired.service.get("pong-1")
    assert rec.state is RunState.notified
    [msg] = completions(wired)
    assert (msg.message_id, msg.status, msg.stop_reason) == (
        "pong-1:completed",
        "Completed",
        "reward_reached",
    )
    assert (msg.final_reward, msg.best_reward, msg.iterations, msg.timesteps) == (18.3, 18.3, 4, 1_500_000)
    assert msg.checkpoint_path == (
        "azureml://subscriptions/sub-1/resourcegroups/rg-1/workspaces/ws-1/datastores/"
        f"workspaceartifactstore/paths/ExperimentRun/dcid.{run.id}_head/outputs/"
        "checkpoints/final"
    )
    assert msg.portal_url.startswith(f"https://ml.azure.com/runs/{run.id}")
    [reply] = wired.broker.receive("replies")
    assert json.loads(reply.body)["message_id"] == "pong-1:completed"


def test_redelivered_request_submits_once(wired: Wiring, twin: AzureMLTwin) -> None:
    body = json.dumps({**PONG, "request_id": "pong-2"}).encode()
    wired.service.intake(body, message_id="m-2")
    wired.service.intake(body, message_id="m-2")
    assert len(twin.runs_for("pong-2")) == 1
    assert [c[0] for c in twin.calls].count("submit") == 1


def test_failed_azure_ml_run_completes_as_failed_with_the_reason(wired: Wiring, twin: AzureMLTwin) -> None:
    wired.service.intake(json.dumps({**PONG, "request_id": "pong-3"}).encode(), message_id="m-3")
    [run] = twin.runs_for("pong-3")
    twin.run_to(run.id, "Running")
    wired.service.poll_once()
    twin.fail(run.id, code="ServiceError", message="Ray head exited with code 1")
    wired.service.poll_once()
    [msg] = completions(wired)
    assert msg.status == "Failed" and "Ray head exited with code 1" in msg.error


def test_cancel_goes_through_cancel_requested(wired: Wiring, twin: AzureMLTwin) -> None:
    wired.service.intake(json.dumps({**PONG, "request_id": "pong-4"}).encode(), message_id="m-4")
    [run] = twin.runs_for("pong-4")
    twin.run_to(run.id, "Running")
    wired.service.poll_once()
    wired.service.cancel("pong-4")
    wired.service.poll_once()
    assert run.status == "CancelRequested" and run.cancel_calls == 1
    twin.step(run.id)
    wired.service.poll_once()
    [msg] = completions(wired)
    assert msg.status == "Canceled"


def test_missing_nsg_rule_fails_the_run_with_what_to_fix(wired: Wiring, twin: AzureMLTwin) -> None:
    twin.nsg_rules = [r for r in twin.nsg_rules if r["name"] != "AllowBatchNodeManagement"]
    rec = wired.service.intake(json.dumps({**PONG, "request_id": "pong-5"}).encode(), message_id="m-5")
    assert twin.runs_for("pong-5") == []
    rec = wired.service.get("pong-5")
    assert rec.state in (RunState.failed, RunState.notified)
    assert "29876-29877" in rec.error and "BatchNodeManagement" in rec.error
