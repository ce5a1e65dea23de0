"""The service end to end on the Azure ML backends, with the workspace twinned.

Real: the orchestration core, SQLite store and broker, the SDK v2 backend (its ``command()`` jobs and
``AmlCompute`` entities, its status mapping). Twinned: the Azure ML workspace's endpoints
(``MLClientTwin``), driven step by step. The seed request goes intake → clusters provisioning →
head job → worker job with the head's address → running → completion message with an
``azureml://`` checkpoint path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.azureml.jobs import job_names
from shared.adapters.compute.azureml.retired import RetiredV1Backend
from shared.adapters.compute.azureml.runs import HEAD_ADDRESS_TAG
from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
from shared.composition import Wiring, build
from shared.contracts.completion import Delivery
from shared.contracts.run import RunState
from shared.settings import Settings
from tests.support.azureml import PONG_REQUEST, WORKSPACE, azureml_settings
from tests.support.azureml_twin import MLClientTwin
from tests.support.network_twin import NetworkTwin
from tests.support.topics import drain_topic


class Notifier:
    def deliver(self, message, request):
        return [Delivery(target="https://hooks.example.com/x", ok=True, attempts=1, status_code=200)]


def _settings(tmp_path: Path, backend: str) -> Settings:
    s = azureml_settings(data_dir=tmp_path / "rlq", backend=backend, max_in_flight=10, stall_timeout_s=3600)
    s.data_dir.mkdir(parents=True)
    return s


@pytest.fixture
def twin() -> MLClientTwin:
    return MLClientTwin(**WORKSPACE)


@pytest.fixture
def network() -> NetworkTwin:
    return NetworkTwin(subscription_id=WORKSPACE["subscription_id"])  # the NSG check's ARM reads


@pytest.fixture
def wired(tmp_path: Path, twin: MLClientTwin, network: NetworkTwin, clock) -> Wiring:
    settings = _settings(tmp_path, "azureml")
    backend = AzureMLV2Backend(
        settings=settings, ml_client=twin, runs=twin.runs, network_factory=network.client
    )
    broker = SqliteBroker(settings.data_dir / "queue.sqlite3", clock=clock.epoch)
    w = build(
        settings, compute={"azureml": backend}, notifier=Notifier(), broker=broker, clock=clock, faults=None
    )
    yield w
    backend.close()


completions = drain_topic  # the completion messages the topic received, drained


def _up(w: Wiring, twin: MLClientTwin, request_id: str) -> str:
    """Intake, clusters up, the poller submits the head job; its name."""
    w.service.intake(
        json.dumps({**PONG_REQUEST, "request_id": request_id}).encode(), message_id=f"m-{request_id}"
    )
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    w.service.poll_once()
    return job_names(request_id)[0]


def test_seed_request_to_completion_through_azure_ml_v2(wired: Wiring, twin: MLClientTwin, clock) -> None:
    body = json.dumps({**PONG_REQUEST, "request_id": "pong-1", "reply_to": "replies"}).encode()
    rec = wired.service.intake(body, message_id="m-1")
    # both clusters are being created: the Function does not wait, the run stays provisioning
    assert rec.state is RunState.provisioning and "being created" in rec.compute_pending
    assert twin.job_names() == []
    wired.service.poll_once()
    assert wired.service.get("pong-1").state is RunState.provisioning
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    wired.service.poll_once()  # clusters Succeeded: the poller submits the head job
    head, workers = job_names("pong-1")
    rec = wired.service.get("pong-1")
    assert rec.state is RunState.submitted and rec.run_id == head and rec.compute_pending is None
    assert twin.job_names() == [head]

    twin.run_to(head, "Running")
    wired.service.poll_once()
    assert wired.service.get("pong-1").state is RunState.running
    assert twin.job_names() == [head]  # no address yet: no worker job
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    wired.service.poll_once()
    assert twin.job_names() == [head, workers]
    assert twin.job(workers).environment_variables["RLQ_RAY_HEAD_ADDRESS"] == "10.0.0.4:6379"
    twin.run_to(workers, "Running")

    for i, reward in enumerate([-20.5, -3.0, 12.0, 18.3]):
        twin.log_metrics(head, step=i + 1, episode_reward_mean=reward, timesteps=400_000 * (i + 1))
        for _ in range(6):  # metrics are read every few ticks, alternating with the worker job's status
            clock.advance(10)
            wired.service.poll_once()
    rec = wired.service.get("pong-1")
    assert rec.progress.iteration == 4 and rec.progress.episode_reward_mean == 18.3
    assert rec.portal_url.startswith(f"https://ml.azure.com/runs/{head}")

    twin.write_summary(head, {"stop_reason": "reward_reached", "timesteps": 1_600_000, "best_reward": 18.3})
    twin.run_to(head, "Completed")
    wired.service.poll_once()

    rec = wired.service.get("pong-1")
    assert rec.state is RunState.notified
    [msg] = completions(wired)
    assert (msg.message_id, msg.status, msg.stop_reason) == (
        "pong-1:completed",
        "Completed",
        "reward_reached",
    )
    assert (msg.final_reward, msg.best_reward, msg.iterations, msg.timesteps) == (18.3, 18.3, 4, 1_600_000)
    assert msg.checkpoint_path == f"azureml://jobs/{head}/outputs/checkpoints/paths/final"
    assert msg.portal_url.startswith(f"https://ml.azure.com/runs/{head}")
    assert twin.job(workers).status == "CancelRequested"  # the head ended: its workers are canceled
    [reply] = wired.broker.receive("replies")
    assert json.loads(reply.body)["message_id"] == "pong-1:completed"
    assert twin.jobs_per_request() == {"pong-1/head": 1, "pong-1/workers": 1}


def test_redelivered_request_submits_once(wired: Wiring, twin: MLClientTwin) -> None:
    head = _up(wired, twin, "pong-2")
    body = json.dumps({**PONG_REQUEST, "request_id": "pong-2"}).encode()
    wired.service.intake(body, message_id="m-pong-2")
    wired.service.poll_once()
    assert twin.jobs_per_request() == {"pong-2/head": 1}
    assert twin.calls().count(("jobs.create_or_update", head)) == 1


def test_cluster_that_fails_to_provision_fails_the_run_with_azures_reason(
    wired: Wiring, twin: MLClientTwin
) -> None:
    wired.service.intake(json.dumps({**PONG_REQUEST, "request_id": "pong-3"}).encode(), message_id="m-3")
    twin.provision("head-gpu", "Failed", error="QuotaExceeded: 0 of 4 NCASv3_T4 cores available")
    wired.service.poll_once()
    [msg] = completions(wired)
    assert msg.status == "Failed" and "QuotaExceeded" in msg.error and twin.job_names() == []


def test_failed_head_job_completes_as_failed_with_the_reason(wired: Wiring, twin: MLClientTwin) -> None:
    head = _up(wired, twin, "pong-4")
    twin.run_to(head, "Running")
    wired.service.poll_once()
    twin.fail(head, message="Ray head exited with code 1")
    wired.service.poll_once()
    [msg] = completions(wired)
    assert msg.status == "Failed" and "Ray head exited with code 1" in msg.error


def test_cancel_goes_to_both_jobs_and_the_completion_says_canceled(wired: Wiring, twin: MLClientTwin) -> None:
    head = _up(wired, twin, "pong-5")
    _, workers = job_names("pong-5")
    twin.run_to(head, "Running")
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    wired.service.poll_once()
    wired.service.cancel("pong-5")
    wired.service.poll_once()
    assert twin.job(head).status == "CancelRequested" and twin.job(workers).status == "CancelRequested"
    twin.step(head)
    twin.step(workers)
    wired.service.poll_once()
    [msg] = completions(wired)
    assert msg.status == "Canceled"


def test_cancel_while_the_clusters_are_provisioning_submits_nothing(
    wired: Wiring, twin: MLClientTwin
) -> None:
    wired.service.intake(json.dumps({**PONG_REQUEST, "request_id": "pong-6"}).encode(), message_id="m-6")
    wired.service.cancel("pong-6")
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    wired.service.poll_once()
    [msg] = completions(wired)
    assert msg.status == "Canceled" and twin.job_names() == []


def test_dead_worker_job_is_reported_on_the_run(wired: Wiring, twin: MLClientTwin, clock) -> None:
    head = _up(wired, twin, "pong-7")
    _, workers = job_names("pong-7")
    twin.run_to(head, "Running")
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    wired.service.poll_once()
    twin.run_to(workers, "Failed")
    for _ in range(6):
        clock.advance(20)
        wired.service.poll_once()
    rec = wired.service.get("pong-7")
    assert rec.state is RunState.running and workers in rec.error and "Failed" in rec.error


def test_missing_nsg_rule_fails_the_run_with_what_to_fix(wired: Wiring, twin: MLClientTwin, network) -> None:
    network.nsg_rules = [r for r in network.nsg_rules if r["name"] != "AllowAzureMachineLearning"]
    wired.service.intake(json.dumps({**PONG_REQUEST, "request_id": "pong-8"}).encode(), message_id="m-8")
    rec = wired.service.get("pong-8")
    assert rec.state in (RunState.failed, RunState.notified)
    assert "AzureMachineLearning" in rec.error and twin.job_names() == []


def test_legacy_v1_backend_fails_the_request_at_once_naming_the_retirement(tmp_path: Path, clock) -> None:
    settings = _settings(tmp_path, "azureml_v1")
    backend = RetiredV1Backend(settings=settings)
    broker = SqliteBroker(settings.data_dir / "queue.sqlite3", clock=clock.epoch)
    w = build(
        settings,
        compute={"azureml_v1": backend},
        notifier=Notifier(),
        broker=broker,
        clock=clock,
        faults=None,
    )
    rec = w.service.intake(json.dumps({**PONG_REQUEST, "request_id": "legacy-1"}).encode(), message_id="m-l1")
    assert rec.state in (RunState.failed, RunState.notified)  # settled: not redelivered ten times
    [msg] = completions(w)
    assert msg.status == "Failed" and "https://aka.ms/rldeprecation" in msg.error
    assert "RLQ_BACKEND=azureml " in msg.error
    backend.close()


def _creates(twin: MLClientTwin, name: str) -> int:
    return sum(1 for call in twin.calls() if call == ("jobs.create_or_update", name))


def test_a_preempted_job_resumes_from_its_checkpoints_as_attempt_2(
    wired: Wiring, twin: MLClientTwin, clock
) -> None:
    head = _up(wired, twin, "pong-lp")
    twin.run_to(head, "Running")
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    twin.log_metrics(head, step=3, episode_reward_mean=-5.0, timesteps=120_000)
    for _ in range(4):
        clock.advance(10)
        wired.service.poll_once()
    workers = job_names("pong-lp")[1]
    twin.run_to(head, "NotResponding")
    wired.service.poll_once()
    twin.preempt(head)
    wired.service.poll_once()  # lost with its node: attempt 2 is recorded and submitted
    wired.service.poll_once()  # a second tick submits nothing more
    head2, workers2 = job_names("pong-lp", attempt=2)
    rec = wired.service.get("pong-lp")
    assert rec.run_id == head2 and rec.attempt == 2
    [lost] = rec.attempts
    assert "preempted or lost" in lost.cause and "NotResponding" in lost.cause
    assert lost.resumed_from == f"azureml://jobs/{head}/outputs/checkpoints"
    assert (_creates(twin, head), _creates(twin, head2)) == (1, 1)
    job2 = twin.job(head2)
    assert job2.inputs["resume"].path == f"azureml://jobs/{head}/outputs/checkpoints"
    assert "--resume-from ${{inputs.resume}}" in job2.command
    assert "--resume" in json.loads(job2.environment_variables["RLQ_TRAINER_ARGV"])
    assert twin.job(workers).status == "CancelRequested"  # the lost head's workers go too

    twin.run_to(head2, "Running")
    twin.set_tag(head2, HEAD_ADDRESS_TAG, "10.0.0.5:6379")
    for _ in range(3):
        wired.service.poll_once()
    assert twin.job(workers2).environment_variables["RLQ_RAY_HEAD_ADDRESS"] == "10.0.0.5:6379"
    twin.write_summary(head2, {"stop_reason": "timesteps_limit", "timesteps": 400_000})
    twin.run_to(head2, "Completed")
    wired.service.poll_once()
    wired.service.poll_once()
    [msg] = completions(wired)
    assert (msg.status, msg.attempts) == ("Completed", 2)
    assert msg.checkpoint_path == f"azureml://jobs/{head2}/outputs/checkpoints/paths/final"
    assert (_creates(twin, head), _creates(twin, head2)) == (1, 1)


def test_a_training_failure_on_azure_ml_is_not_resumed(wired: Wiring, twin: MLClientTwin, clock) -> None:
    head = _up(wired, twin, "pong-tf")
    twin.run_to(head, "Running")
    twin.log_metrics(head, step=1, episode_reward_mean=-20.0, timesteps=4000)
    twin.fail(head, message="ValueError: the loss is NaN")  # the trainer's own exit: its summary says why
    wired.service.poll_once()
    [msg] = completions(wired)
    assert (msg.status, msg.attempts) == ("Failed", 1) and "NaN" in msg.error
    assert twin.job_names() == [head]
