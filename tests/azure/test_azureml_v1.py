"""The Azure ML SDK v1 backend.

Azure ML cannot be reached from here. What is real: the SDK's own ``ReinforcementLearningEstimator``,
``WorkerConfiguration``, ``Ray``, ``Environment`` and ``AmlCompute.provisioning_configuration``
objects (built by the backend, asserted here), the SDK's exception classes, and the trainer's own
argument parser. What is replaced: the calls that would go to Azure — the workspace's compute,
experiment and run endpoints (``AzureMLTwin``, an in-package gateway that records what it was
handed) and the two ARM network reads of the NSG check.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shared.adapters.azureml import v1 as azureml_v1
from shared.adapters.azureml.clusters import ComputeInfo, cluster_problems, worker_shm_size
from shared.adapters.azureml.environment import CONDA_FILE, parse_requirements
from shared.adapters.azureml.errors import translate
from shared.adapters.azureml.gateway import SdkGateway
from shared.adapters.azureml.twin import AzureMLTwin
from shared.adapters.azureml.v1 import (
    ARGV_ENV,
    DEPRECATION_URL,
    RUN_TAG,
    STATUS_TO_STATE,
    AzureMLRayBackend,
    checkpoint_relpath,
)
from shared.errors import ComputeError, PermanentError, TransientError
from shared.models import TrainingRequest, parse_request
from shared.ports import ComputeBackend
from shared.settings import Settings
from tests.support.azureml import WORKSPACE, azureml_settings

REPO = Path(__file__).resolve().parents[2]

ARTICLE_REQUEST = {
    "request_id": "pong-2024-01",
    "experiment": "rllib-pong-multi-node",
    "algorithm": "IMPALA",
    "env": "PongNoFrameskip-v4",
    "stop": {"episode_reward_mean": 18, "time_total_s": 3600},
}


@pytest.fixture
def settings() -> Settings:
    return azureml_settings()


@pytest.fixture
def twin() -> AzureMLTwin:
    return AzureMLTwin(**WORKSPACE)


@pytest.fixture
def backend(settings: Settings, twin: AzureMLTwin):
    # metrics on every status call here; test_metrics_are_read_less_often_than_status covers the default
    b = AzureMLRayBackend(settings=settings, gateway=twin, network_factory=twin.network, metrics_every=1)
    yield b
    b.close()


def article() -> TrainingRequest:
    return parse_request(json.dumps(ARTICLE_REQUEST))


def legacy_run(backend: AzureMLRayBackend, req: TrainingRequest) -> str:
    """A run submitted before the retirement (the backend itself no longer submits): still polled."""
    tags = {**req.tags, RUN_TAG: req.request_id}
    return str(backend.gateway.submit(req.experiment, backend.build_estimator(req), tags).id)


# --- the estimator: real SDK objects ---------------------------------------------------------


def test_article_request_builds_the_real_estimator(backend: AzureMLRayBackend) -> None:
    from azureml.contrib.train.rl import Ray, ReinforcementLearningEstimator, WorkerConfiguration

    est = backend.build_estimator(article())
    assert isinstance(est, ReinforcementLearningEstimator)
    assert isinstance(est.framework, Ray)
    head = est.head_configuration
    assert head.target == "head-gpu"
    assert head.script == "trainer/train.py"
    assert head.arguments == ["--argv-from-env", ARGV_ENV]
    assert head.shm_size == "24g"
    argv = json.loads(head.environment.environment_variables[ARGV_ENV])
    assert argv == [
        "--run",
        "IMPALA",
        "--env",
        "PongNoFrameskip-v4",
        "--config",
        '{"num_gpus":1,"num_workers":11}',
        "--stop",
        '{"episode_reward_mean":18.0,"time_total_s":3600}',
        "--output-dir",
        "outputs",
        "--ray-address",
        "localhost:6379",
        "--checkpoint-freq",
        "10",
    ]
    workers = est.worker_configuration
    assert isinstance(workers, WorkerConfiguration)
    assert (workers.target, workers.node_count, workers._use_gpu) == ("worker-cpu", 4, False)
    assert workers.shm_size == "4g"  # 40% of the default worker D2as_v5 (8 GiB), rounded up
    rl = est.rl_config
    assert rl.max_run_duration_seconds == 3600
    assert rl.cluster_coordination_timeout_seconds == 3600
    assert est._use_gpu is True


def test_head_and_workers_share_one_image_built_from_trainer_requirements(backend: AzureMLRayBackend) -> None:
    est = backend.build_estimator(article())
    requirements = parse_requirements((REPO / "trainer" / "requirements.txt").read_text())
    assert requirements, "trainer/requirements.txt lists the cluster's packages"
    for env in (est.head_configuration.environment, est.worker_configuration.environment):
        deps = env.python.conda_dependencies
        assert env.docker.base_image == backend.settings.azureml_base_image
        assert deps.get_python_version() == "3.11"
        assert set(requirements) <= set(deps.pip_packages)
        assert not any(p.startswith("tensorflow") for p in deps.pip_packages)  # not the Ray 0.8 scenario
    source = Path(est.source_directory)
    assert (source / "trainer" / "train.py").is_file()
    assert (source / CONDA_FILE).is_file()
    assert sorted(p.name for p in source.iterdir()) == ["rlq_conda_env.yml", "trainer"]


def test_trainer_parses_the_argv_the_estimator_carries(backend: AzureMLRayBackend, monkeypatch) -> None:
    """The contract with the trainer: its own parser and plan accept what the backend sends."""
    from trainer.train import Plan, parse_args

    est = backend.build_estimator(article())
    monkeypatch.setenv(ARGV_ENV, est.head_configuration.environment.environment_variables[ARGV_ENV])
    args = parse_args(est.head_configuration.arguments)
    assert (args.run, args.env, args.ray_address, args.output_dir) == (
        "IMPALA",
        "PongNoFrameskip-v4",
        "localhost:6379",
        "outputs",
    )
    plan = Plan(args)
    assert plan.algorithm == "IMPALA" and plan.checkpoint_freq == 10


def test_request_clusters_and_config_override_the_defaults(backend: AzureMLRayBackend) -> None:
    req = parse_request(
        {
            **ARTICLE_REQUEST,
            "request_id": "big-1",
            "config": {"num_workers": 20, "lr": 0.0005},
            "compute": {
                "head": {"name": "head-t4", "vm_size": "Standard_NC8as_T4_v3", "max_nodes": 1},
                "workers": {"name": "cpu16", "vm_size": "STANDARD_F16S_V2", "node_count": 2, "max_nodes": 2},
                "max_run_duration_s": 7200,
            },
            "evaluate": {"episodes": 3, "gif": True},
        }
    )
    est = backend.build_estimator(req)
    argv = json.loads(est.head_configuration.environment.environment_variables[ARGV_ENV])
    config = json.loads(argv[argv.index("--config") + 1])
    assert config == {"lr": 0.0005, "num_gpus": 1, "num_workers": 20}  # given num_workers kept
    assert argv[-3:] == ["--evaluate-episodes", "3", "--evaluate-gif"]
    assert est.head_configuration.target == "head-t4"
    assert (est.worker_configuration.target, est.worker_configuration.node_count) == ("cpu16", 2)
    assert est.worker_configuration.shm_size == worker_shm_size("STANDARD_F16S_V2") == "13g"
    assert est.rl_config.max_run_duration_seconds == 7200


def test_num_workers_derivation_follows_the_seed(backend: AzureMLRayBackend) -> None:
    cases = [
        ({}, 11),  # NC4as_T4_v3 (4) + 4 x D2as_v5 (2) - 1
        ({"workers": {"node_count": 2, "max_nodes": 4}}, 7),  # 4 + 2 x 2 - 1
        (
            {
                "head": {"vm_size": "STANDARD_D2AS_V5"},
                "workers": {"vm_size": "STANDARD_D8AS_V5", "node_count": 3},
            },
            25,
        ),
    ]
    for compute, expected in cases:
        req = parse_request({**ARTICLE_REQUEST, "compute": compute})
        argv = backend.job_argv(req)
        assert json.loads(argv[argv.index("--config") + 1])["num_workers"] == expected, compute
    cpu_head = parse_request({**ARTICLE_REQUEST, "compute": {"head": {"vm_size": "STANDARD_D2AS_V5"}}})
    argv = backend.job_argv(cpu_head)
    assert json.loads(argv[argv.index("--config") + 1])["num_gpus"] == 0
    est = backend.build_estimator(cpu_head)
    assert est._use_gpu is False


def test_argv_is_a_list_with_unquoted_json_and_tags_stay_off_it(
    backend: AzureMLRayBackend, twin: AzureMLTwin
) -> None:
    req = parse_request({**ARTICLE_REQUEST, "tags": {"note": "two words here"}})
    argv = backend.job_argv(req)
    assert all(isinstance(a, str) for a in argv)
    config = argv[argv.index("--config") + 1]
    assert config.startswith("{") and json.loads(config)  # no shell quoting added around JSON
    assert not any("two words" in a for a in argv)
    backend.ensure_compute(req)
    run = twin.runs[legacy_run(backend, req)]
    assert run.tags["note"] == "two words here"  # tags go to the Azure ML run, not the command line
    assert run.estimator.head_configuration.arguments == ["--argv-from-env", ARGV_ENV]


def test_provisioning_configuration_is_the_real_sdk_object(backend: AzureMLRayBackend) -> None:
    from azureml.core.compute.amlcompute import AmlComputeProvisioningConfiguration

    c = backend.clusters(article())
    cfg = backend.provisioning_config(vm_size="STANDARD_NC6", min_nodes=0, max_nodes=2, clusters=c)
    assert isinstance(cfg, AmlComputeProvisioningConfiguration)
    assert cfg.vm_size == "STANDARD_NC6"
    assert (cfg.scale_settings.minimum_node_count, cfg.scale_settings.maximum_node_count) == (0, 2)
    assert (cfg.vnet_resourcegroup_name, cfg.vnet_name, cfg.subnet_name) == ("rlq-rg", "rlq-vnet", "aml")
    assert cfg.remote_login_port_public_access == "Disabled"


def test_vnet_resource_group_setting_wins(settings: Settings, twin: AzureMLTwin) -> None:
    s = settings.model_copy(update={"azureml_vnet_resource_group": "net-rg"})
    b = AzureMLRayBackend(settings=s, gateway=twin, network_factory=twin.network)
    b.ensure_compute(article())
    assert twin.provisioning_configs["head-gpu"].vnet_resourcegroup_name == "net-rg"
    assert ("subnets.get", "net-rg/rlq-vnet/aml") in twin.calls


# --- ensure_compute ----------------------------------------------------------------------------


def test_ensure_compute_creates_both_clusters_without_waiting(
    backend: AzureMLRayBackend, twin: AzureMLTwin
) -> None:
    backend.ensure_compute(article())
    head, workers = twin.provisioning_configs["head-gpu"], twin.provisioning_configs["worker-cpu"]
    assert (head.vm_size, head.scale_settings.minimum_node_count, head.scale_settings.maximum_node_count) == (
        "STANDARD_NC4AS_T4_V3",
        0,
        2,
    )
    assert (
        workers.vm_size,
        workers.scale_settings.maximum_node_count,
        workers.vnet_name,
        workers.subnet_name,
    ) == ("STANDARD_D2AS_V5", 4, "rlq-vnet", "aml")
    assert twin.computes["head-gpu"].provisioning_state == "Creating"  # nobody waited for it
    # a second request reuses them while they are still being created
    backend.ensure_compute(article())
    assert [c for c in twin.calls if c[0] == "create_compute"] == [
        ("create_compute", "head-gpu"),
        ("create_compute", "worker-cpu"),
    ]


def test_sdk_gateway_creates_without_wait_for_completion(monkeypatch) -> None:
    from azureml.core.compute import AmlCompute, ComputeTarget

    created = []

    class Target:
        def wait_for_completion(self, *a, **k):
            raise AssertionError("ensure_compute must never wait for provisioning")

    def fake_create(workspace, name, config):  # the network call, replaced
        created.append((workspace, name, config))
        return Target()

    monkeypatch.setattr(ComputeTarget, "create", staticmethod(fake_create))
    ws = object()
    config = AmlCompute.provisioning_configuration(vm_size="STANDARD_D2AS_V5", min_nodes=0, max_nodes=4)
    SdkGateway(lambda: ws).create_compute("worker-cpu", config)
    assert created == [(ws, "worker-cpu", config)]


def test_sdk_gateway_submits_the_estimator_with_tags(monkeypatch, backend: AzureMLRayBackend) -> None:
    from azureml.core import Experiment

    submitted = []

    class FakeRun:
        id = "rllib-pong-multi-node_1700000000_abc"

    def fake_submit(self, config, tags=None, **kwargs):  # the network call, replaced
        submitted.append((self.name, config, tags))
        return FakeRun()

    monkeypatch.setattr(
        Experiment, "__init__", lambda self, workspace, name, **k: setattr(self, "_name", name)
    )
    monkeypatch.setattr(Experiment, "name", property(lambda self: self._name))
    monkeypatch.setattr(Experiment, "submit", fake_submit)
    est = backend.build_estimator(article())
    run = SdkGateway(lambda: object()).submit("rllib-pong-multi-node", est, {RUN_TAG: "pong-2024-01"})
    assert run.id == FakeRun.id
    assert submitted == [("rllib-pong-multi-node", est, {RUN_TAG: "pong-2024-01"})]


@pytest.mark.parametrize(
    "existing, message",
    [
        (
            ComputeInfo(
                "head-gpu",
                "AmlCompute",
                "Failed",
                "STANDARD_NC4AS_T4_V3",
                "rlq-vnet",
                "aml",
                max_nodes=2,
                errors='[{"code": "AllocationFailed"}]',
            ),
            "provisioning state is Failed",
        ),
        (
            ComputeInfo(
                "head-gpu",
                "AmlCompute",
                "Succeeded",
                "STANDARD_NC4AS_T4_V3",
                "other-vnet",
                "aml",
                max_nodes=2,
            ),
            "it is in other-vnet/aml, not rlq-vnet/aml",
        ),
        (
            ComputeInfo(
                "head-gpu", "AmlCompute", "Succeeded", "STANDARD_NC4AS_T4_V3", None, None, max_nodes=2
            ),
            "it is in no virtual network",
        ),
        (
            ComputeInfo(
                "head-gpu", "AmlCompute", "Succeeded", "STANDARD_NC8AS_T4_V3", "rlq-vnet", "aml", max_nodes=2
            ),
            "VM size is STANDARD_NC8AS_T4_V3, the request asks for STANDARD_NC4AS_T4_V3",
        ),
        (
            ComputeInfo(
                "head-gpu", "ComputeInstance", "Succeeded", "STANDARD_NC4AS_T4_V3", "rlq-vnet", "aml"
            ),
            "not an AmlCompute cluster",
        ),
    ],
)
def test_unusable_existing_cluster_is_a_compute_error(
    backend: AzureMLRayBackend, twin: AzureMLTwin, existing: ComputeInfo, message: str
) -> None:
    twin.add_compute(existing)
    with pytest.raises(ComputeError) as info:
        backend.ensure_compute(article())
    assert "cluster head-gpu cannot take this job" in str(info.value)
    assert message in str(info.value)
    assert "create_compute" not in [c[0] for c in twin.calls]


def test_worker_cluster_too_small_for_the_node_count(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    twin.add_compute(
        ComputeInfo(
            "worker-cpu",
            "AmlCompute",
            "Succeeded",
            "STANDARD_D2AS_V5",
            "rlq-vnet",
            "aml",
            vnet_resource_group="rlq-rg",
            max_nodes=2,
        )
    )
    with pytest.raises(ComputeError, match="scales to 2 nodes, the job needs 4"):
        backend.ensure_compute(article())


def test_existing_matching_clusters_are_reused(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    for name, size, n in (("head-gpu", "STANDARD_NC4AS_T4_V3", 2), ("worker-cpu", "Standard_D2as_v5", 4)):
        twin.add_compute(
            ComputeInfo(
                name,
                "AmlCompute",
                "Succeeded",
                size,
                "rlq-vnet",
                "aml",
                vnet_resource_group="rlq-rg",
                max_nodes=n,
            )
        )
    backend.ensure_compute(article())
    assert "create_compute" not in [c[0] for c in twin.calls]


def test_cluster_being_deleted_is_transient(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    twin.add_compute(
        ComputeInfo("head-gpu", "AmlCompute", "Deleting", "STANDARD_NC4AS_T4_V3", "rlq-vnet", "aml")
    )
    with pytest.raises(TransientError, match="being deleted"):
        backend.ensure_compute(article())


def test_workers_without_a_vnet_are_refused(settings: Settings, twin: AzureMLTwin) -> None:
    b = AzureMLRayBackend(settings=settings.model_copy(update={"azureml_vnet": None}), gateway=twin)
    with pytest.raises(ComputeError, match="RLQ_AZUREML_VNET"):
        b.ensure_compute(article())
    # a head-only run needs no VNet
    b.ensure_compute(parse_request({**ARTICLE_REQUEST, "compute": {"workers": {"node_count": 0}}}))
    assert twin.provisioning_configs["head-gpu"].vnet_name is None


def test_restore_from_is_refused_with_a_reason(backend: AzureMLRayBackend) -> None:
    req = parse_request(
        {
            **ARTICLE_REQUEST,
            "restore_from": "azureml://subscriptions/s/resourcegroups/g/workspaces/w/datastores/d/paths/ckpt",
        }
    )
    with pytest.raises(ComputeError, match="restore_from"):
        backend.ensure_compute(req)


def test_quota_and_auth_errors_from_create(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    from azureml.exceptions import ComputeTargetException

    twin.fail_next(
        "create_compute",
        ComputeTargetException(
            "Received bad response from Resource Provider: Response Code: 400 ... QuotaExceeded: dedicated "
            "cores quota for NC family is 0"
        ),
    )
    with pytest.raises(ComputeError, match="quota"):
        backend.ensure_compute(article())
    twin.fail_next(
        "get_compute",
        ComputeTargetException(
            "Received bad response from Resource Provider: Response Code: 403 AuthorizationFailed"
        ),
    )
    with pytest.raises(PermanentError, match="AzureML Compute Operator"):
        backend.ensure_compute(article())
    twin.fail_next(
        "get_compute",
        ComputeTargetException(
            "Received bad response from Resource Provider: Response Code: 429 Too many requests"
        ),
    )
    with pytest.raises(TransientError, match="HTTP 429"):
        backend.ensure_compute(article())


# --- the NSG check -------------------------------------------------------------------------------

# The evaluator itself: tests/azure/test_nsg.py.


def test_ensure_compute_fails_on_a_missing_rule_and_caches_good_answers(
    settings: Settings, twin: AzureMLTwin
) -> None:
    now = [0.0]
    b = AzureMLRayBackend(
        settings=settings,
        gateway=twin,
        network_factory=twin.network,
        monotonic=lambda: now[0],
        nsg_cache_s=600,
    )
    b.ensure_compute(article())
    b.ensure_compute(article())
    assert [c[0] for c in twin.calls].count("network_security_groups.get") == 1  # cached
    now[0] = 601.0
    twin.nsg_rules = [r for r in twin.nsg_rules if r["name"] != "AllowStorage"]
    with pytest.raises(ComputeError, match=r"outbound TCP 443 to service tag Storage\.<region>"):
        b.ensure_compute(article())
    warn = AzureMLRayBackend(
        settings=settings.model_copy(update={"azureml_nsg_check": "warn"}),
        gateway=twin,
        network_factory=twin.network,
    )
    warn.ensure_compute(article())  # logs, does not fail


def test_unreadable_nsg_does_not_block(settings: Settings, twin: AzureMLTwin, caplog) -> None:
    def broken():
        raise RuntimeError("no permission to read the network")

    b = AzureMLRayBackend(settings=settings, gateway=twin, network_factory=broken)
    with caplog.at_level(logging.WARNING, logger="shared.adapters.azureml"):
        b.ensure_compute(article())
    assert "skipping the check" in caplog.text


# --- submit / find / status / cancel against the twin ------------------------------------------


def test_backend_satisfies_the_port(backend: AzureMLRayBackend) -> None:
    assert isinstance(backend, ComputeBackend)
    assert backend.name == "azureml_v1"


def test_submit_tags_the_run_and_a_redelivery_finds_it(
    backend: AzureMLRayBackend, twin: AzureMLTwin, settings: Settings
) -> None:
    req = article()
    backend.ensure_compute(req)
    run_id = legacy_run(backend, req)
    [run] = twin.runs_for("pong-2024-01")
    assert run.id == run_id and run.experiment == "rllib-pong-multi-node"
    assert run.tags[RUN_TAG] == "pong-2024-01"
    assert backend.find("pong-2024-01") == run_id
    # a fresh process (no memory of the experiment) submitting the same request finds the run
    fresh = AzureMLRayBackend(settings=settings, gateway=twin, network_factory=twin.network)
    assert fresh.find("pong-2024-01") is None
    assert fresh.submit(req) == run_id
    assert len(twin.runs_for("pong-2024-01")) == 1


def test_submit_is_refused_naming_the_retirement_and_the_v2_backend(
    backend: AzureMLRayBackend, twin: AzureMLTwin
) -> None:
    backend.ensure_compute(article())
    with pytest.raises(PermanentError) as err:
        backend.submit(article())
    assert err.value.reason == "AzureMLV1Retired"
    assert DEPRECATION_URL in err.value.description and "RLQ_BACKEND=azureml " in err.value.description
    assert twin.runs_for("pong-2024-01") == []


def test_status_mapping_table_is_complete() -> None:
    expected = {
        "NotStarted": "pending",
        "Queued": "pending",
        "Preparing": "pending",
        "Provisioning": "pending",
        "Starting": "pending",
        "Running": "running",
        "Finalizing": "running",
        "CancelRequested": "running",
        "NotResponding": "running",
        "Completed": "succeeded",
        "Failed": "failed",
        "Canceled": "stopped",
    }
    for status, state in expected.items():
        assert STATUS_TO_STATE[status] == state, status


def test_run_lifecycle_progress_and_summary(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    req = article()
    backend.ensure_compute(req)
    run_id = legacy_run(backend, req)
    seen = []
    while twin.runs[run_id].status != "Running":
        seen.append(backend.status(run_id).state)
        twin.step(run_id)
    assert set(seen) == {"pending"}
    st = backend.status(run_id)
    assert (st.state, st.progress) == ("running", None)
    assert st.portal_url.startswith(f"https://ml.azure.com/runs/{run_id}")
    twin.log_iteration(run_id, reward=-21.0, episodes=40)
    st = backend.status(run_id)
    assert (st.progress.iteration, st.progress.episode_reward_mean, st.progress.episodes_total) == (
        1,
        -21.0,
        40,
    )
    for i, reward in enumerate([-15.0, 3.5, 18.6, 18.2]):
        twin.log_iteration(run_id, reward=reward, episodes=100 + i)
    assert backend.status(run_id).progress.iteration == 5
    assert backend.status(run_id).summary is None
    twin.write_outputs(
        run_id,
        {
            "outputs/summary.json": {
                "stop_reason": "reward_reached",
                "timesteps": 2_000_000,
                "final_reward": 99.0,
                "checkpoint_path": "file:///mnt/azureml/cr/j/abc/exe/wd/outputs/checkpoints/final",
            },
            "outputs/checkpoints/final/algorithm_state.pkl": b"x",
        },
    )
    twin.run_to(run_id, "Completed")
    st = backend.status(run_id)
    assert st.state == "succeeded"
    s = st.summary
    assert (s["final_reward"], s["best_reward"], s["iterations"]) == (
        18.2,
        18.6,
        5,
    )  # from the metric history
    assert (s["stop_reason"], s["timesteps"]) == ("reward_reached", 2_000_000)  # from summary.json
    assert s["checkpoint_path"] == (
        "azureml://subscriptions/11111111-2222-3333-4444-555555555555/resourcegroups/rlq-rg/workspaces/rlq-ws/"
        f"datastores/workspaceartifactstore/paths/ExperimentRun/dcid.{run_id}_head/outputs/checkpoints/final"
    )
    assert s["duration_s"] == 3600.0


def test_metrics_are_read_less_often_than_status(settings: Settings, twin: AzureMLTwin) -> None:
    b = AzureMLRayBackend(settings=settings, gateway=twin, network_factory=twin.network)
    req = article()
    b.ensure_compute(req)
    run_id = legacy_run(b, req)
    twin.run_to(run_id, "Running")
    before = len(twin.calls)
    for i in range(9):
        twin.log_iteration(run_id, reward=float(i), episodes=10 * (i + 1))
        b.status(run_id)
    calls = [c[0] for c in twin.calls[before:]]
    assert calls.count("get_status") == 9
    assert calls.count("get_metrics") == 3  # the recursive listing every third tick
    twin.run_to(run_id, "Completed")
    assert b.status(run_id).summary["iterations"] == 9  # the end always reads the full history
    b.close()


def test_failed_run_reports_a_readable_error(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    req = article()
    backend.ensure_compute(req)
    run_id = legacy_run(backend, req)
    twin.run_to(run_id, "Running")
    twin.fail(
        run_id,
        code="UserError",
        message="Ray cluster did not start in 3600 s:  see\n driver_log.txt "
        "https://acct.blob.core.windows.net/x?sv=2020&sig=SECRETSIG",
    )
    st = backend.status(run_id)
    assert st.state == "failed"
    assert st.error.startswith("UserError: Ray cluster did not start in 3600 s: see driver_log.txt")
    assert "SECRETSIG" not in st.error and st.summary["error"] == st.error


def test_cancel_requests_then_the_run_stops(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    req = article()
    backend.ensure_compute(req)
    run_id = legacy_run(backend, req)
    twin.run_to(run_id, "Running")
    backend.cancel(run_id)
    assert backend.status(run_id).state == "running"  # CancelRequested
    backend.cancel(run_id)  # already requested: not asked twice
    assert twin.runs[run_id].cancel_calls == 1
    twin.step(run_id)
    st = backend.status(run_id)
    assert st.state == "stopped" and st.summary["stop_reason"] == "canceled"
    backend.cancel(run_id)  # terminal: no-op
    assert twin.runs[run_id].cancel_calls == 1


def test_status_errors_are_translated(backend: AzureMLRayBackend, twin: AzureMLTwin) -> None:
    from azureml._restclient.exceptions import ServiceException  # noqa: F401  (the SDK's HTTP error type)
    from azureml.exceptions import ProjectSystemException

    twin.fail_next("get_run", ProjectSystemException("Service unavailable. Response Code: 503"))
    with pytest.raises(TransientError, match="HTTP 503"):
        backend.status("any")
    with pytest.raises(PermanentError, match="not found"):
        backend.status("never-submitted")


def test_translate_table() -> None:
    from azureml.exceptions import AuthenticationException, UserErrorException

    assert isinstance(translate(ConnectionError("reset"), action="x"), TransientError)
    assert isinstance(translate(TimeoutError(), action="x"), TransientError)
    assert isinstance(translate(AuthenticationException("no token"), action="x"), PermanentError)
    assert isinstance(translate(UserErrorException("bad entry script"), action="x"), PermanentError)
    err = translate(UserErrorException("AzureMLCompute job failed. Response Code: 500"), action="x")
    assert isinstance(err, TransientError)


# --- helpers ------------------------------------------------------------------------------------


def test_checkpoint_relpath() -> None:
    assert (
        checkpoint_relpath("file:///mnt/x/wd/outputs/checkpoints/ckpt_000100/", [])
        == "outputs/checkpoints/ckpt_000100"
    )
    files = [
        "outputs/checkpoints/ckpt_000010/a",
        "outputs/checkpoints/ckpt_000020/a",
        "outputs/metrics.jsonl",
    ]
    assert checkpoint_relpath(None, files) == "outputs/checkpoints/ckpt_000020"
    assert checkpoint_relpath(None, [*files, "outputs/checkpoints/final/a"]) == "outputs/checkpoints/final"
    assert checkpoint_relpath(None, ["outputs/metrics.jsonl"]) is None


def test_cluster_problems_accepts_a_match() -> None:
    info = ComputeInfo("w", "AmlCompute", "Succeeded", "Standard_D2_v2", "V", "S", "RG", max_nodes=4)
    assert (
        cluster_problems(
            info, vm_size="STANDARD_D2_V2", nodes_needed=4, vnet="v", subnet="s", vnet_resource_group="rg"
        )
        == []
    )
    assert cluster_problems(
        info, vm_size="STANDARD_D2_V2", nodes_needed=4, vnet="v", subnet="s", vnet_resource_group="other"
    ) == ["its VNet is in resource group RG, not other"]


def test_deprecation_is_logged_once(settings: Settings, twin: AzureMLTwin, caplog, monkeypatch) -> None:
    monkeypatch.setattr(azureml_v1, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="shared.adapters.azureml.v1"):
        AzureMLRayBackend(settings=settings, gateway=twin)
        AzureMLRayBackend(settings=settings, gateway=twin)
    ours = [r for r in caplog.records if r.name == "shared.adapters.azureml.v1"]
    assert len(ours) == 1 and DEPRECATION_URL in ours[0].getMessage()


def test_module_imports_no_sdk_and_the_backend_imports_no_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import shared.adapters.azureml.v1 as m\n"
        "assert not [k for k in sys.modules if k.split('.')[0] == 'azureml'], 'azureml imported eagerly'\n"
        "from shared.adapters.azureml.twin import AzureMLTwin\n"
        "from shared.settings import Settings\n"
        "from shared.models import parse_request\n"
        "t = AzureMLTwin()\n"
        "b = m.AzureMLRayBackend(settings=Settings(azureml_vnet='v', _env_file=None), gateway=t, "
        "network_factory=t.network)\n"
        "r = parse_request({'request_id': 'x', 'env': 'CartPole-v1'})\n"
        "b.ensure_compute(r); b.find('x')\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'torch'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
