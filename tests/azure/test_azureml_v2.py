"""The Azure ML SDK v2 backend (``azure-ai-ml``).

Azure ML cannot be reached from here. Real: the SDK's own ``command()`` jobs, ``AmlCompute``,
``NetworkSettings``, ``MpiDistribution``, ``Environment``, ``Input`` / ``Output`` entities built by
the backend and serialised with the SDK's own REST serialisation (``_to_rest_object().as_dict()``,
what ``jobs.create_or_update`` / ``compute.begin_create_or_update`` send), the SDK's exception
classes, and the trainer's own argument parser. Twinned: the workspace's endpoints
(``MLClientTwin``: name conflicts, provisioning states, the job state machine, cancel, MLflow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.adapters.compute.azureml import v2
from shared.adapters.compute.azureml.jobs import COMPUTE_TAG, RUN_TAG, job_names
from shared.adapters.compute.azureml.runs import HEAD_ADDRESS_TAG
from shared.adapters.compute.azureml.v2 import STATUS_TO_STATE, AzureMLV2Backend
from shared.contracts.parsing import parse_request
from shared.contracts.request import TrainingRequest
from shared.errors import ComputeError, PermanentError, TransientError
from shared.ports import ComputeBackend, ComputePending
from shared.settings import Settings
from tests.support.azureml import SUBSCRIPTION_ID, WORKSPACE, azureml_settings
from tests.support.azureml_twin import MLClientTwin

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-ray-token-never-in-a-job"

# The seed: IMPALA on Pong, a GPU head and four CPU workers in a VNet.
SEED = {
    "request_id": "pong-2024-01",
    "experiment": "rllib-pong-multi-node",
    "algorithm": "IMPALA",
    "env": "PongNoFrameskip-v4",
    "stop": {"episode_reward_mean": 18, "time_total_s": 3600},
    "compute": {
        "head": {"name": "head-gpu", "vm_size": "STANDARD_NC4AS_T4_V3", "min_nodes": 0, "max_nodes": 1},
        "workers": {
            "name": "worker-cpu",
            "vm_size": "STANDARD_D4AS_V5",
            "node_count": 4,
            "min_nodes": 0,
            "max_nodes": 4,
        },
        "max_run_duration_s": 7200,
    },
}


@pytest.fixture
def settings() -> Settings:
    return azureml_settings(
        azureml_nsg_check="off",
        azureml_key_vault_uri="https://rlq-kv.vault.azure.net/",
        azureml_cluster_identity=(
            f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rlq-rg/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/rlq-clusters"
        ),
        azureml_cluster_identity_client_id="aaaaaaaa-0000-0000-0000-000000000001",
        ray_auth_token=TOKEN,
    )


@pytest.fixture
def twin() -> MLClientTwin:
    return MLClientTwin(**WORKSPACE)


@pytest.fixture
def backend(settings: Settings, twin: MLClientTwin):
    b = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs, detail_every=3)
    yield b
    b.close()


def seed() -> TrainingRequest:
    return parse_request(json.dumps(SEED))


def ready(backend: AzureMLV2Backend, twin: MLClientTwin, req: TrainingRequest) -> None:
    assert isinstance(backend.ensure_compute(req), ComputePending)
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    assert backend.ensure_compute(req) is None


def workers_submitted(backend: AzureMLV2Backend, twin: MLClientTwin, req: TrainingRequest) -> str:
    """The head job of ``req`` running with its address published and the worker job submitted."""
    ready(backend, twin, req)
    head = backend.submit(req)
    twin.run_to(head, "Running")
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    backend.status(head)  # submits the worker job
    return head


def rest(job) -> dict:
    """What ``jobs.create_or_update`` sends: the job's REST body (code / environment still local)."""
    return job._to_job()._to_rest_object().as_dict()


# --- what the SDK is asked to do: serialised field by field ------------------------------------


def test_seed_head_job_serialised_by_the_sdk(backend: AzureMLV2Backend) -> None:
    from azure.ai.ml.entities import Environment

    job = backend.builder.build_head_job(seed())
    body = rest(job)
    head_name, _ = job_names("pong-2024-01")
    assert body["name"] == head_name == "rlq-pong-2024-01-" + body["name"].split("-")[-2] + "-head"
    p = body["properties"]
    assert p["jobType"] == "Command"
    assert p["computeId"] == "head-gpu"
    assert p["experimentName"] == "rllib-pong-multi-node"
    assert p["command"] == "python trainer/bootstrap.py --role head --checkpoints ${{outputs.checkpoints}}"
    assert p["distribution"] == {"distributionType": "Mpi", "processCountPerInstance": 1}
    assert p["resources"]["instanceCount"] == 1
    assert p["resources"]["shmSize"] == "24g"
    assert p["limits"] == {"jobLimitsType": "Command", "timeout": "PT2H"}  # max_run_duration_s 7200
    assert p["outputs"] == {"checkpoints": {"jobOutputType": "uri_folder", "mode": "ReadWriteMount"}}
    assert p["inputs"] == {}
    assert p["tags"] == {
        "rlq_algorithm": "IMPALA",
        "rlq_env": "PongNoFrameskip-v4",
        "rlq_experiment": "rllib-pong-multi-node",
        "rlq_role": "head",
        RUN_TAG: "pong-2024-01",
        COMPUTE_TAG: json.dumps(
            {
                "head": {"tier": "dedicated", **SEED["compute"]["head"], "node_count": 1},
                "workers": {"tier": "dedicated", **SEED["compute"]["workers"]},
            },
            separators=(",", ":"),
        ),
    }
    env = p["environmentVariables"]
    assert json.loads(env["RLQ_RAY_NODE_RESOURCES"]) == {"rlq_head": 1}
    assert (env["RLQ_RAY_EXPECT_WORKERS"], env["RLQ_RAY_EXPECT_HEAD_NODES"]) == ("4", "1")
    assert env["RLQ_RAY_PORT"] == "6379"
    assert env["RLQ_RAY_TOKEN_VAULT"] == "https://rlq-kv.vault.azure.net/"
    assert env["RLQ_RAY_TOKEN_SECRET"] == "rlq-ray-token"
    assert env["RLQ_IDENTITY_CLIENT_ID"] == "aaaaaaaa-0000-0000-0000-000000000001"
    argv = json.loads(env["RLQ_TRAINER_ARGV"])
    config = json.loads(argv[argv.index("--config") + 1])
    # EnvRunners on the workers' vCPUs (4 x 4; they are placed there), the head's one GPU
    assert config == {"num_gpus": 1, "num_env_runners": 16}
    assert argv[argv.index("--ray-address") + 1] == "localhost:6379"
    assert argv[argv.index("--output-dir") + 1] == "outputs"
    # the code snapshot is trainer/ alone; the image is the GPU base + trainer/requirements.txt
    code = Path(p["codeId"])
    assert (code / "trainer" / "bootstrap.py").is_file() and (code / "trainer" / "train.py").is_file()
    assert sorted(x.name for x in code.iterdir()) == ["rlq_conda_env.yml", "trainer"]
    assert isinstance(job.environment, Environment)
    assert job.environment.image == backend.settings.azureml_base_image
    pip = job.environment.conda_file["dependencies"][-1]["pip"]
    assert "ray[rllib]==2.60.0" in pip and "torch==2.13.0" in pip
    # no secret anywhere in what is sent
    assert TOKEN not in json.dumps(body, default=str)


def test_trainer_parses_the_argv_the_head_job_carries(backend: AzureMLV2Backend, monkeypatch) -> None:
    from trainer import train

    env = rest(backend.builder.build_head_job(seed()))["properties"]["environmentVariables"]
    monkeypatch.setenv("RLQ_TRAINER_ARGV", env["RLQ_TRAINER_ARGV"])
    args = train.parse_args(["--argv-from-env", "RLQ_TRAINER_ARGV"])
    assert (args.run, args.env) == ("IMPALA", "PongNoFrameskip-v4")
    assert json.loads(args.config) == {"num_gpus": 1, "num_env_runners": 16}


def test_seed_worker_job_serialised_by_the_sdk(backend: AzureMLV2Backend) -> None:
    body = rest(backend.builder.build_worker_job(seed(), "10.0.0.4:6379"))
    _, worker_name = job_names("pong-2024-01")
    assert body["name"] == worker_name
    p = body["properties"]
    assert p["computeId"] == "worker-cpu"
    assert p["command"] == "python trainer/bootstrap.py --role worker"
    assert p["distribution"] == {"distributionType": "Mpi", "processCountPerInstance": 1}
    assert p["resources"]["instanceCount"] == 4
    assert p["resources"]["shmSize"] == "7g"  # 40% of a D4as_v5's 16 GiB: Ray's object store lives there
    env = p["environmentVariables"]
    assert env["RLQ_RAY_HEAD_ADDRESS"] == "10.0.0.4:6379"
    assert json.loads(env["RLQ_RAY_NODE_RESOURCES"]) == {"rlq_worker": 1}
    assert "RLQ_TRAINER_ARGV" not in env  # the trainer runs on the head only
    assert p["tags"]["rlq_role"] == "workers" and p["tags"][RUN_TAG] == "pong-2024-01"
    assert p["outputs"] == {} and TOKEN not in json.dumps(body, default=str)


def test_seed_clusters_serialised_by_the_sdk(backend: AzureMLV2Backend, twin: MLClientTwin) -> None:
    backend.ensure_compute(seed())
    head = twin.compute_entity("head-gpu")
    # what compute.begin_create_or_update does before sending
    head._set_full_subnet_name(SUBSCRIPTION_ID, "rlq-rg")
    body = head._to_rest_object().as_dict()
    props = body["properties"]["properties"]
    assert body["properties"]["computeType"] == "AmlCompute"
    assert props["vmSize"] == "STANDARD_NC4AS_T4_V3"
    assert props["scaleSettings"] == {
        "minNodeCount": 0,
        "maxNodeCount": 1,
        "nodeIdleTimeBeforeScaleDown": "PT30M",
    }
    assert props["subnet"] == {
        "id": f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rlq-rg/providers/Microsoft.Network/virtualNetworks/rlq-vnet/subnets/aml"
    }
    assert props["enableNodePublicIp"] is False  # no-public-IP cluster in the VNet
    assert props["remoteLoginPortPublicAccess"] == "Disabled"
    assert body["identity"]["type"] == "UserAssigned"
    assert list(body["identity"]["userAssignedIdentities"]) == [backend.settings.azureml_cluster_identity]
    workers = twin.compute_entity("worker-cpu")
    workers._set_full_subnet_name(SUBSCRIPTION_ID, "rlq-rg")
    wprops = workers._to_rest_object().as_dict()["properties"]["properties"]
    assert wprops["vmSize"] == "STANDARD_D4AS_V5" and wprops["scaleSettings"]["maxNodeCount"] == 4


def test_vnet_in_another_resource_group_is_named_by_its_subnet_id(
    settings: Settings, twin: MLClientTwin
) -> None:
    s = settings.model_copy(update={"azureml_vnet_resource_group": "net-rg"})
    b = AzureMLV2Backend(settings=s, ml_client=twin, runs=twin.runs)
    b.ensure_compute(seed())
    head = twin.compute_entity("head-gpu")
    head._set_full_subnet_name(SUBSCRIPTION_ID, "rlq-rg")
    subnet = head._to_rest_object().as_dict()["properties"]["properties"]["subnet"]["id"]
    assert (
        subnet
        == f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/rlq-vnet/subnets/aml"
    )


def test_node_public_ip_follows_the_setting_the_nsg_check_uses(
    settings: Settings, twin: MLClientTwin
) -> None:
    s = settings.model_copy(update={"azureml_node_public_ip": True})
    AzureMLV2Backend(settings=s, ml_client=twin, runs=twin.runs).ensure_compute(seed())
    head = twin.compute_entity("head-gpu")
    head._set_full_subnet_name(SUBSCRIPTION_ID, "rlq-rg")
    assert head._to_rest_object().as_dict()["properties"]["properties"]["enableNodePublicIp"] is True


def test_restore_from_azureml_becomes_a_uri_folder_input(backend: AzureMLV2Backend) -> None:
    uri = "azureml://jobs/rlq-old-0123456789-head/outputs/checkpoints/paths/final"
    req = parse_request({**SEED, "restore_from": uri})
    p = rest(backend.builder.build_head_job(req))["properties"]
    assert p["inputs"] == {"restore": {"jobInputType": "uri_folder", "mode": "ReadOnlyMount", "uri": uri}}
    assert p["command"].endswith("--restore ${{inputs.restore}}")


def test_the_models_champion_is_a_uri_folder_input_and_its_version_an_argument(
    backend: AzureMLV2Backend,
) -> None:
    uri = "azureml://jobs/rlq-champ-0123456789-head/outputs/checkpoints/paths/final"
    req = parse_request({**SEED, "champion": {"version": 4, "checkpoint_path": uri}})
    job = rest(backend.builder.build_head_job(req))["properties"]
    assert job["inputs"] == {"champion": {"jobInputType": "uri_folder", "mode": "ReadOnlyMount", "uri": uri}}
    assert job["command"].endswith("--champion ${{inputs.champion}}")
    argv = backend.builder.job_argv(req, backend.builder.clusters(req))
    assert argv[argv.index("--champion-version") + 1] == "4" and "--champion" not in argv
    assert argv[argv.index("--model-eval-episodes") + 1] == "20"


def test_restore_from_a_local_path_is_refused_naming_the_field(backend: AzureMLV2Backend) -> None:
    req = parse_request({**SEED, "restore_from": "file:///tmp/ckpt"})
    with pytest.raises(ComputeError, match="restore_from"):
        backend.builder.build_head_job(req)


# --- compute: never blocking, pending until Succeeded, reported not resized ----------------------


def test_ensure_compute_creates_both_clusters_and_does_not_wait(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    pending = backend.ensure_compute(seed())
    assert isinstance(pending, ComputePending)
    assert "head-gpu" in pending.detail and "worker-cpu" in pending.detail
    creates = [c for c in twin.calls() if c[0] == "compute.begin_create_or_update"]
    assert creates == [
        ("compute.begin_create_or_update", "head-gpu"),
        ("compute.begin_create_or_update", "worker-cpu"),
    ]
    # asked again while creating: no second create, still pending
    assert isinstance(backend.ensure_compute(seed()), ComputePending)
    assert len([c for c in twin.calls() if c[0] == "compute.begin_create_or_update"]) == 2
    twin.provision("head-gpu")
    assert "worker-cpu" in backend.ensure_compute(seed()).detail
    twin.provision("worker-cpu")
    assert backend.ensure_compute(seed()) is None


def test_cluster_that_fails_to_provision_fails_with_azures_reason(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    backend.ensure_compute(seed())
    twin.provision("head-gpu", "Failed", error="QuotaExceeded: not enough NCASv3_T4 cores in westeurope")
    with pytest.raises(ComputeError, match=r"Failed.*QuotaExceeded"):
        backend.ensure_compute(seed())


def test_existing_cluster_of_another_size_or_smaller_max_is_reported_not_resized(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    from azure.ai.ml.entities import AmlCompute, NetworkSettings

    net = NetworkSettings(vnet_name="rlq-vnet", subnet="aml")
    twin.add_compute(
        AmlCompute(name="head-gpu", size="STANDARD_NC8AS_T4_V3", max_instances=1, network_settings=net)
    )
    twin.add_compute(
        AmlCompute(name="worker-cpu", size="STANDARD_D4AS_V5", max_instances=2, network_settings=net)
    )
    with pytest.raises(ComputeError) as err:
        backend.ensure_compute(seed())
    assert "STANDARD_NC8AS_T4_V3" in str(err.value)
    assert not [c for c in twin.calls() if c[0] == "compute.begin_create_or_update"]
    twin.add_compute(
        AmlCompute(name="head-gpu", size="STANDARD_NC4AS_T4_V3", max_instances=1, network_settings=net)
    )
    with pytest.raises(ComputeError, match="scales to 2 nodes, the job needs 4"):
        backend.ensure_compute(seed())


def test_workers_without_a_vnet_are_refused(settings: Settings, twin: MLClientTwin) -> None:
    b = AzureMLV2Backend(
        settings=settings.model_copy(update={"azureml_vnet": None}), ml_client=twin, runs=twin.runs
    )
    with pytest.raises(ComputeError, match="virtual network"):
        b.ensure_compute(seed())


# --- submit: deterministic names, adopt on conflict ---------------------------------------------


def test_backend_satisfies_the_port(backend: AzureMLV2Backend) -> None:
    assert isinstance(backend, ComputeBackend) and backend.name == "azureml"


def test_job_names_are_deterministic_valid_and_distinct() -> None:
    import re

    head, workers = job_names("pong-2024-01")
    assert job_names("pong-2024-01") == (head, workers)
    assert job_names("Pong-2024-01") != (head, workers)  # differ in case only: other jobs
    for name in (head, workers, *job_names("x" * 100), *job_names("a.b:c")):
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,254}", name), name


def test_find_before_submit_and_a_redelivery_adopts_the_job(
    backend: AzureMLV2Backend, twin: MLClientTwin, settings: Settings
) -> None:
    req = seed()
    ready(backend, twin, req)
    assert backend.find(req.request_id) is None
    run_id = backend.submit(req)
    assert run_id == job_names(req.request_id)[0] and backend.find(req.request_id) == run_id
    # a fresh process that submits again (it died before recording the run id): it looks the job
    # up and adopts it; rlq asks Azure to create it once in all (the twin, like Azure, would refuse
    # a second create of the name, so the jobs that exist cannot tell: the create calls can)
    fresh = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)
    before = len(twin.calls())
    assert fresh.submit(req) == run_id
    assert twin.jobs_per_request() == {"pong-2024-01/head": 1}
    assert twin.calls().count(("jobs.create_or_update", run_id)) == 1
    assert twin.calls()[before:] == [("jobs.get", run_id)]


def test_a_job_created_between_the_look_up_and_the_create_is_adopted(
    backend: AzureMLV2Backend, twin: MLClientTwin, settings: Settings
) -> None:
    """Two processes race for one request: the loser's create meets the taken name and adopts."""
    req = seed()
    ready(backend, twin, req)
    head = job_names(req.request_id)[0]
    rival = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)
    twin.before_create = lambda job: (setattr(twin, "before_create", None), rival.submit(req))
    assert backend.submit(req) == head
    assert twin.jobs_per_request() == {"pong-2024-01/head": 1}
    assert twin.calls().count(("jobs.create_or_update", head)) == 2  # the rival's, then the refused one


def test_twin_refuses_a_taken_job_name_as_azure_does(backend: AzureMLV2Backend, twin: MLClientTwin) -> None:
    from azure.core.exceptions import HttpResponseError

    job = backend.builder.build_head_job(seed())
    twin.jobs.create_or_update(job)
    with pytest.raises(HttpResponseError, match="A job with this name already exists"):
        twin.jobs.create_or_update(job)


def test_sdk_errors_are_translated(backend: AzureMLV2Backend, twin: MLClientTwin) -> None:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    req = seed()
    ready(backend, twin, req)
    busy = HttpResponseError(message="Service Unavailable")
    busy.status_code = 503
    twin.fail_next("jobs.create_or_update", busy)
    with pytest.raises(TransientError, match="503"):
        backend.submit(req)
    twin.fail_next("jobs.create_or_update", ClientAuthenticationError(message="no token"))
    with pytest.raises(PermanentError, match="not authorized"):
        backend.submit(req)
    assert backend.submit(req) == job_names(req.request_id)[0]


# --- status: every v2 status, the worker job, metrics less often than status ---------------------


def test_every_v2_job_status_is_mapped() -> None:
    from azure.ai.ml._restclient.arm_ml_service.models._enums import JobStatus

    assert set(STATUS_TO_STATE) == {s.value for s in JobStatus}
    assert {k for k, v in STATUS_TO_STATE.items() if v in ("succeeded", "failed", "stopped")} == {
        "Completed",
        "Failed",
        "Canceled",
    }
    for waiting in ("NotResponding", "Paused", "CancelRequested"):
        assert STATUS_TO_STATE[waiting] == "running"  # not terminal: the stall detector covers them


def test_head_then_worker_job_with_the_published_address(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    req = seed()
    ready(backend, twin, req)
    head = backend.submit(req)
    _, workers = job_names(req.request_id)
    assert backend.status(head).state == "pending"  # NotStarted
    twin.run_to(head, "Running")
    for _ in range(3):  # running, no address yet: no worker job
        assert backend.status(head).state == "running"
    assert workers not in twin.job_names()
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    backend.status(head)
    job = twin.job(workers)
    assert job.environment_variables["RLQ_RAY_HEAD_ADDRESS"] == "10.0.0.4:6379"
    assert job.compute == "worker-cpu" and job.resources.instance_count == 4
    backend.status(head)
    assert twin.jobs_per_request() == {"pong-2024-01/head": 1, "pong-2024-01/workers": 1}


def test_one_cheap_call_per_tick_and_metrics_less_often_than_status(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    req = seed()
    head = workers_submitted(backend, twin, req)
    before = len(twin.calls())
    ticks = 12
    for i in range(ticks):
        twin.log_metrics(head, step=i + 1, episode_reward_mean=-20.0 + i, timesteps=1000 * (i + 1))
        st = backend.status(head)
    calls = twin.calls()[before:]
    status_calls = [c for c in calls if c == ("jobs.get", head)]
    metric_calls = [c for c in calls if c[0] == "mlflow.get_run"]
    assert len(status_calls) == ticks
    assert (
        len(calls) - len(status_calls) <= ticks // backend.detail_every
    )  # at most one extra, every 3rd tick
    assert 0 < len(metric_calls) < len(status_calls)
    assert st.progress is not None and st.progress.iteration > 1 and st.progress.timesteps >= 1000


def test_a_dead_worker_job_is_reported_while_the_head_runs(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    req = seed()
    head = workers_submitted(backend, twin, req)
    _, workers = job_names(req.request_id)
    twin.run_to(workers, "Failed")
    errors = [backend.status(head).error for _ in range(2 * backend.detail_every)]
    assert any(e and workers in e and "Failed" in e for e in errors)


def test_completion_cancels_the_workers_and_names_the_checkpoint(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    req = seed()
    head = workers_submitted(backend, twin, req)
    _, workers = job_names(req.request_id)
    twin.run_to(workers, "Running")
    twin.log_metrics(head, step=40, episode_reward_mean=18.4, timesteps=2_000_000)
    twin.write_summary(head, {"stop_reason": "reward_reached", "best_reward": 18.6, "iterations": 40})
    twin.run_to(head, "Completed")
    st = backend.status(head)
    assert st.state == "succeeded"
    assert st.summary.checkpoint_path == f"azureml://jobs/{head}/outputs/checkpoints/paths/final"
    assert (st.summary.stop_reason, st.summary.best_reward, st.summary.final_reward) == (
        "reward_reached",
        18.6,
        18.4,
    )
    assert st.portal_url.startswith(f"https://ml.azure.com/runs/{head}")
    assert twin.job(workers).status == "CancelRequested" and twin.cancel_count(workers) == 1


def test_failed_head_reports_the_trainers_error(backend: AzureMLV2Backend, twin: MLClientTwin) -> None:
    req = seed()
    ready(backend, twin, req)
    head = backend.submit(req)
    twin.fail(head, message="UsageError: --config.num_gpus: 1: at most 0 (GPUs in the Ray cluster)")
    st = backend.status(head)
    assert (
        st.state == "failed"
        and "num_gpus" in st.error
        and st.summary is not None
        and st.summary.checkpoint_path is None
    )


def test_cancel_goes_to_both_jobs(backend: AzureMLV2Backend, twin: MLClientTwin) -> None:
    req = seed()
    head = workers_submitted(backend, twin, req)
    _, workers = job_names(req.request_id)
    backend.cancel(head)
    backend.cancel(head)  # idempotent: CancelRequested is not asked again
    assert twin.cancel_count(head) == 1 and twin.cancel_count(workers) == 1
    assert backend.status(head).state == "running"  # CancelRequested
    twin.step(head)
    st = backend.status(head)
    assert st.state == "stopped" and st.summary.stop_reason == "canceled"


def test_status_of_an_unknown_job_is_a_clear_error(backend: AzureMLV2Backend) -> None:
    with pytest.raises(PermanentError, match="rlq-nope-head"):
        backend.status("rlq-nope-head")


def test_module_imports_no_sdk_until_used(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import shared.adapters.compute.azureml.v2\n"
        "bad = sorted(k for k in sys.modules if k.startswith(('azure.ai.ml', 'mlflow', 'ray', 'torch')))\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_v1_is_refused_naming_the_retirement_and_the_v2_backend() -> None:
    from shared.adapters.compute.azureml.retired import DEPRECATION_URL, RetiredV1Backend

    assert DEPRECATION_URL == "https://aka.ms/rldeprecation"
    b = RetiredV1Backend(settings=Settings(azureml_vnet="v", _env_file=None))
    assert b.name == "azureml_v1"
    request = parse_request({"request_id": "x", "env": "CartPole-v1"})
    for call in (b.ensure_compute, b.submit):
        with pytest.raises(PermanentError) as err:
            call(request)
        assert "https://aka.ms/rldeprecation" in err.value.description
        assert "RLQ_BACKEND=azureml " in err.value.description
    assert b.find("x") is None


def test_composition_selects_v2_for_azureml_and_the_refusal_for_azureml_v1(tmp_path: Path) -> None:
    from shared.adapters.compute.azureml.retired import RetiredV1Backend
    from shared.composition import _compute

    s = Settings(data_dir=tmp_path, azureml_vnet="v", _env_file=None)
    assert isinstance(_compute(s, "azureml"), AzureMLV2Backend)
    assert isinstance(_compute(s, "azureml_v1"), RetiredV1Backend)
    assert v2.AzureMLV2Backend is AzureMLV2Backend


# --- readiness: the workspace answers ------------------------------------------------------------


def test_check_is_one_workspace_get_of_the_configured_workspace(backend: AzureMLV2Backend, twin) -> None:
    from shared.ports import ReadinessProbe

    assert isinstance(backend, ReadinessProbe)
    assert backend.check() == "Azure ML workspace rlq-ws in rlq-rg answers"
    assert twin.calls() == [("workspaces.get", "rlq-ws")]  # nothing created, started or listed


def test_check_names_the_workspace_when_azure_refuses_or_is_busy(backend: AzureMLV2Backend, twin) -> None:
    from azure.core.exceptions import HttpResponseError

    refused = HttpResponseError(
        message="(AuthorizationFailed) The client does not have authorization to perform action "
        "'Microsoft.MachineLearningServices/workspaces/read' https://x.blob.core.windows.net/c?sig=s3cr3t"
    )
    refused.status_code = 403
    twin.fail_next("workspaces.get", refused)
    with pytest.raises(PermanentError) as info:
        backend.check()
    text = str(info.value)
    assert "health check of workspace rlq-ws" in text and "AzureML Data Scientist" in text
    assert "s3cr3t" not in text
    busy = HttpResponseError(message="Service Unavailable")
    busy.status_code = 503
    twin.fail_next("workspaces.get", busy)
    with pytest.raises(TransientError, match="health check of workspace rlq-ws failed with HTTP 503"):
        backend.check()
    assert backend.check().endswith("answers")  # nothing cached in the backend: the next check asks again
    assert twin.calls() == [("workspaces.get", "rlq-ws")] * 3


def test_check_of_a_workspace_that_is_gone_is_not_found(backend: AzureMLV2Backend, twin) -> None:
    twin.delete_workspace()
    with pytest.raises(PermanentError, match="health check of workspace rlq-ws: not found") as info:
        backend.check()
    assert info.value.reason == "AzureMLNotFound"


def test_the_twin_workspaces_get_matches_the_sdk_signature() -> None:
    import inspect

    from azure.ai.ml.operations import WorkspaceOperations

    assert list(inspect.signature(WorkspaceOperations.get).parameters)[:2] == ["self", "name"]


def _sdk_operations() -> dict[tuple[str, str], object]:
    from azure.ai.ml.operations import ComputeOperations, JobOperations, WorkspaceOperations

    return {
        ("jobs", "create_or_update"): JobOperations.create_or_update,
        ("jobs", "get"): JobOperations.get,
        ("jobs", "begin_cancel"): JobOperations.begin_cancel,
        ("compute", "begin_create_or_update"): ComputeOperations.begin_create_or_update,
        ("compute", "get"): ComputeOperations.get,
        ("workspaces", "get"): WorkspaceOperations.get,
    }


SURFACE = [
    ("jobs", "create_or_update"),
    ("jobs", "get"),
    ("jobs", "begin_cancel"),
    ("compute", "begin_create_or_update"),
    ("compute", "get"),
    ("workspaces", "get"),
]


@pytest.mark.parametrize(("group", "method"), SURFACE, ids=lambda x: x)
def test_the_twin_takes_the_arguments_the_installed_sdk_takes(group: str, method: str) -> None:
    """Same positional parameters, in order, with the same names; every keyword the SDK takes is
    taken (by name or ``**kwargs``); none the SDK would refuse."""
    import inspect

    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    sdk = [
        p for p in inspect.signature(_sdk_operations()[group, method]).parameters.values() if p.name != "self"
    ]
    twin = list(inspect.signature(getattr(getattr(MLClientTwin(), group), method)).parameters.values())
    sdk_pos = [p.name for p in sdk if p.kind in positional]
    twin_pos = [p.name for p in twin if p.kind in positional]
    assert twin_pos[: len(sdk_pos)] == sdk_pos, (sdk_pos, twin_pos)
    extra = [p for p in twin if p.kind in positional][len(sdk_pos) :]
    assert all(p.default is not inspect.Parameter.empty for p in extra), "the twin needs more"
    twin_kw = {p.name for p in twin if p.kind is inspect.Parameter.KEYWORD_ONLY}
    twin_any_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in twin)
    sdk_kw = {p.name for p in sdk if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert twin_any_kw or sdk_kw <= twin_kw, sdk_kw - twin_kw
    sdk_any_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sdk)
    assert sdk_any_kw or twin_kw <= sdk_kw | set(sdk_pos)


class _SdkChecked:
    """One operations group of the twin whose every call is first bound to the installed SDK's
    signature (a call the SDK would refuse raises ``TypeError`` here)."""

    def __init__(self, group: str, ops: object) -> None:
        self._group, self._ops = group, ops

    def __getattr__(self, method: str):
        import inspect

        real = getattr(self._ops, method)
        sdk = _sdk_operations().get((self._group, method))
        if sdk is None:
            return real

        def call(*args, **kwargs):
            inspect.signature(sdk).bind(None, *args, **kwargs)
            return real(*args, **kwargs)

        return call


def test_every_call_the_backend_makes_fits_the_installed_sdk(settings: Settings, twin: MLClientTwin) -> None:
    for group in ("jobs", "compute", "workspaces"):
        setattr(twin, group, _SdkChecked(group, getattr(twin, group)))
    b = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs, detail_every=1)
    req = seed()
    head = workers_submitted(b, twin, req)
    b.cancel(head)
    b.status(head)
    b.check()
    methods = {m for m, _ in twin.calls()}
    assert {f"{g}.{m}" for g, m in SURFACE} <= methods
    b.close()


def test_the_image_brings_no_cuda_of_its_own_and_nothing_installs_sdk_v1() -> None:
    """torch==2.13.0 from PyPI carries its CUDA 13.0 runtime; an image's own CUDA (11.8 before)
    could only disagree with it. SDK v1 (azureml-core, its RL contrib) is installed nowhere."""
    import tomllib

    from shared.adapters.compute.azureml.environment import TRAINER_DIR, parse_requirements

    assert "cuda" not in Settings(_env_file=None).azureml_base_image.lower()
    trainer = parse_requirements((TRAINER_DIR / "requirements.txt").read_text())
    assert "torch==2.13.0" in trainer and any(r.startswith("azure-identity") for r in trainer)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    everything = [
        *trainer,
        *parse_requirements((REPO / "requirements.txt").read_text()),
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    assert [r for r in everything if r.startswith(("azureml-core", "azureml-contrib"))] == []


# --- the single-cluster topology -----------------------------------------------------------------

SINGLE = {
    "request_id": "pong-single",
    "experiment": "rllib-pong-single",
    "algorithm": "IMPALA",
    "env": "PongNoFrameskip-v4",
    "compute": {
        "head": {"name": "gpu-multi", "vm_size": "STANDARD_NC24ADS_A100_V4", "node_count": 2, "max_nodes": 2}
    },
}


def test_a_request_naming_no_workers_is_one_job_on_the_head_cluster(twin: MLClientTwin) -> None:
    """No worker cluster, no VNet needed, no second job: the head job alone, on ``head.node_count``
    nodes (an MPI job whose rank 0 is the Ray head), and the head waits for no worker."""
    settings = azureml_settings(azureml_vnet=None, azureml_nsg_check="off", ray_auth_token=TOKEN)
    assert settings.worker_node_count == 0  # the deployment names no default workers
    b = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs, detail_every=1)
    req = parse_request(json.dumps(SINGLE))
    assert isinstance(b.ensure_compute(req), ComputePending)  # no VNet asked for: one cluster
    twin.provision("gpu-multi")
    assert b.ensure_compute(req) is None
    assert [c for m, c in twin.calls() if m == "compute.begin_create_or_update"] == ["gpu-multi"]
    head = b.submit(req)
    p = twin.job(head)._to_rest_object().as_dict()["properties"]
    assert p["resources"]["instanceCount"] == 2
    assert p["distribution"] == {"distributionType": "Mpi", "processCountPerInstance": 1}
    env = p["environmentVariables"]
    assert (env["RLQ_RAY_EXPECT_WORKERS"], env["RLQ_RAY_EXPECT_HEAD_NODES"]) == ("0", "2")
    argv = json.loads(env["RLQ_TRAINER_ARGV"])
    # the seed's rule over both head nodes: 2 x 24 vCPUs minus one, one node's GPU for the Learner
    assert json.loads(argv[argv.index("--config") + 1]) == {"num_gpus": 1, "num_workers": 47}
    # running, address published, metrics flowing: no worker job, ever (a fresh process too)
    twin.run_to(head, "Running")
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    fresh = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs, detail_every=1)
    for backend in (b, fresh, b, fresh):
        assert backend.status(head).state == "running"
    assert twin.job_names() == [head]
    assert [c for m, c in twin.calls() if m == "jobs.create_or_update"] == [head]
    b.close()
    fresh.close()


def test_a_fresh_process_still_submits_the_seeds_worker_job(settings: Settings, twin: MLClientTwin) -> None:
    """The deployment names no default workers, the seed names four: a poller that never saw the
    request reads them from the head job (``rlq_compute``) and submits the worker job."""
    first = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)
    req = seed()
    ready(first, twin, req)
    head = first.submit(req)
    twin.run_to(head, "Running")
    twin.set_tag(head, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    fresh = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)
    fresh.status(head)
    worker = twin.job(job_names(req.request_id)[1])
    assert worker.resources.instance_count == 4 and worker.compute == "worker-cpu"
    first.close()
    fresh.close()


def test_head_node_count_is_bounded_by_its_max_nodes_and_counted_by_the_caps() -> None:
    from shared.contracts.request import Compute, HeadCluster

    with pytest.raises(ValueError, match=r"node_count \(3\) must not exceed max_nodes \(2\)"):
        HeadCluster(node_count=3, max_nodes=2)
    c = Compute(head=HeadCluster(vm_size="STANDARD_NC24ADS_A100_V4", node_count=3, max_nodes=3))
    assert (c.total_gpus(), c.total_nodes()) == (3 + 0, 3 + 4)  # absent workers: the model's default


def test_a_cluster_may_ask_for_low_priority_nodes(backend: AzureMLV2Backend, twin: MLClientTwin) -> None:
    compute = {
        **SEED["compute"],
        "head": {**SEED["compute"]["head"], "tier": "low_priority"},
    }
    backend.ensure_compute(parse_request({**SEED, "compute": compute}))
    head = twin.compute_entity("head-gpu")
    workers = twin.compute_entity("worker-cpu")
    assert (head.tier, workers.tier) == ("low_priority", "dedicated")
    for entity, priority in ((head, "LowPriority"), (workers, "Dedicated")):
        entity._set_full_subnet_name(SUBSCRIPTION_ID, "rlq-rg")
        assert entity._to_rest_object().as_dict()["properties"]["properties"]["vmPriority"] == priority


def test_a_tier_other_than_dedicated_or_low_priority_is_refused_naming_the_field() -> None:
    compute = {**SEED["compute"], "workers": {**SEED["compute"]["workers"], "tier": "spot"}}
    with pytest.raises(Exception) as err:
        parse_request({**SEED, "compute": compute})
    text = str(err.value)
    assert "compute.workers.tier" in text and "'dedicated'" in text and "'low_priority'" in text


def test_attempt_2_is_its_own_job_resuming_from_attempt_1s_checkpoints(
    backend: AzureMLV2Backend, twin: MLClientTwin
) -> None:
    req = seed()
    ready(backend, twin, req)
    first = backend.submit(req)
    second = backend.submit(req, attempt=2)
    assert second == job_names(req.request_id, 2)[0] != first
    assert second.endswith("-a2-head") and backend.find(req.request_id, 2) == second
    assert backend.submit(req, attempt=2) == second  # looked up first: adopted, not created again
    creates = [c for c in twin.calls() if c[0] == "jobs.create_or_update"]
    assert creates == [("jobs.create_or_update", first), ("jobs.create_or_update", second)]
    job = twin.job(second)
    assert job.inputs["resume"].path == f"azureml://jobs/{first}/outputs/checkpoints"
    assert "--resume" not in json.loads(twin.job(first).environment_variables["RLQ_TRAINER_ARGV"])
