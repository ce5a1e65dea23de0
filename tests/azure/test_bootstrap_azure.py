"""What ``trainer/bootstrap.py`` does on an Azure ML node before Ray starts, and the contract it shares
with the Azure ML backend.

Real: azure-identity's ``ManagedIdentityCredential`` talking HTTP to a local server that stands in
for the node's managed identity endpoint (``MSI_ENDPOINT`` / ``MSI_SECRET``, what Azure ML sets on
compute cluster nodes) and for the Key Vault; the trainer's own row builder and MLflow sink; the
v2 backend's progress reader and worker submission (against the workspace twin). Stood in: the
``mlflow`` module the sink and the bootstrap call (recording what they were asked to log).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from shared.adapters.compute.azureml import runs
from shared.adapters.compute.azureml.jobs import job_names
from shared.adapters.compute.azureml.runs import RunView
from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
from shared.contracts.parsing import parse_request
from tests.support.azureml import PONG_REQUEST, WORKSPACE, azureml_settings
from tests.support.azureml_twin import MLClientTwin
from trainer import bootstrap, contract
from trainer.metrics import Offsets, Progress
from trainer.sinks import MLflowSink

MSI_SECRET = "msi-secret-of-the-node"
ACCESS_TOKEN = "vault-access-token"
RAY_TOKEN = "ray-token-from-the-vault"
SECRET_NAME = "rlq-ray-token"


# --- the managed identity: the request the node makes ---------------------------------------------


class _Endpoint(BaseHTTPRequestHandler):
    """``/msi/token`` answers as Azure ML's MSI endpoint does; ``/secrets/<name>`` as Key Vault."""

    seen: ClassVar[list[dict]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.seen.append({"path": url.path, "query": query, "headers": dict(self.headers)})
        if url.path == "/msi/token":
            if self.headers.get("secret") != MSI_SECRET:
                return self._json(401, {"error": "bad secret"})
            expires = int(time.time()) + 3600  # Azure ML answers an integer (azure_ml.py's note)
            body = {
                "access_token": ACCESS_TOKEN,
                "expires_on": expires,
                "resource": query["resource"][0],
                "token_type": "Bearer",
            }
            return self._json(200, body)
        if url.path == f"/secrets/{SECRET_NAME}":
            if self.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                return self._json(401, {"error": "no token"})
            return self._json(200, {"value": RAY_TOKEN + "\n"})
        return self._json(404, {"error": url.path})

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def node(monkeypatch):
    """A node's environment as Azure ML sets it: ``MSI_ENDPOINT`` / ``MSI_SECRET`` and
    ``DEFAULT_IDENTITY_CLIENT_ID``, and no other identity endpoint; the vault served locally."""
    _Endpoint.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for name in (
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "AZURE_CLIENT_ID",
        "RLQ_IDENTITY_CLIENT_ID",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MSI_ENDPOINT", f"{base}/msi/token")
    monkeypatch.setenv("MSI_SECRET", MSI_SECRET)
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "cluster-identity-client-id")
    monkeypatch.setenv("RLQ_RAY_TOKEN_VAULT", base + "/")
    monkeypatch.setenv("RLQ_RAY_TOKEN_SECRET", SECRET_NAME)
    yield _Endpoint.seen
    server.shutdown()
    server.server_close()


def _token_requests(seen: list[dict]) -> list[dict]:
    return [r for r in seen if r["path"] == "/msi/token"]


def _sdk_request(client_id: str) -> dict[str, list[str]]:
    """The query azure-identity's own Azure ML credential builds for this identity and the vault."""
    from azure.identity._credentials import azure_ml

    args = azure_ml._get_client_args(client_id=client_id)
    assert args is not None  # MSI_ENDPOINT and MSI_SECRET are set
    request = args["request_factory"](
        bootstrap.VAULT_SCOPE.removesuffix("/.default"), args["identity_config"]
    )
    return urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)


def test_the_cluster_identity_is_named_by_default_identity_client_id(node) -> None:
    import os

    assert bootstrap.resolve_token(os.environ) == RAY_TOKEN
    [request] = _token_requests(node)
    assert request["query"]["clientid"] == ["cluster-identity-client-id"]
    assert "client_id" not in request["query"]  # what the endpoint would not read
    assert request["query"]["resource"] == ["https://vault.azure.net"]
    assert request["headers"]["secret"] == MSI_SECRET
    assert request["query"] == _sdk_request("cluster-identity-client-id")
    [vault] = [r for r in node if r["path"].startswith("/secrets/")]
    assert vault["query"]["api-version"] == ["7.4"]


def test_a_user_assigned_identity_rlq_names_wins(node, monkeypatch) -> None:
    import os

    monkeypatch.setenv("RLQ_IDENTITY_CLIENT_ID", "user-assigned-client-id")
    assert bootstrap.resolve_token(os.environ) == RAY_TOKEN
    [request] = _token_requests(node)
    assert request["query"]["clientid"] == ["user-assigned-client-id"]
    assert request["query"] == _sdk_request("user-assigned-client-id")


def test_the_token_never_reaches_the_argv_or_the_environment(node, tmp_path: Path) -> None:
    import os

    env = bootstrap.ray_env(bootstrap.resolve_token(os.environ), tmp_path)
    assert RAY_TOKEN not in json.dumps(env) and (tmp_path / "ray_auth_token").read_text() == RAY_TOKEN


# --- the GPU preflight -----------------------------------------------------------------------------


def _head_env(monkeypatch, tmp_path: Path, config: dict) -> Path:
    out = tmp_path / "outputs"
    argv = ["--run", "IMPALA", "--env", "PongNoFrameskip-v4", "--config", json.dumps(config)]
    monkeypatch.setenv(bootstrap.ARGV_ENV, json.dumps([*argv, "--output-dir", str(out)]))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)
    for name in bootstrap.RANK_ENVS:
        monkeypatch.delenv(name, raising=False)
    return out


class _RayStarted(Exception):
    pass


def _no_ray(**kwargs: object) -> None:
    raise _RayStarted


def test_a_gpu_request_without_a_usable_gpu_fails_before_ray_starts(monkeypatch, tmp_path, capsys) -> None:
    import torch

    out = _head_env(monkeypatch, tmp_path, {"num_gpus": 1, "num_env_runners": 4})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bootstrap, "start_node", _no_ray)
    assert bootstrap.main(["--role", "head"]) == bootstrap.NO_GPU_EXIT == 2
    said = capsys.readouterr().out
    assert f"--config num_gpus=1 asks for a GPU but torch {torch.__version__}" in said
    assert f"built for CUDA {torch.version.cuda or 'none: a CPU-only build'}" in said
    assert ("NVIDIA driver: " in said) or ("no NVIDIA driver is loaded on this node" in said)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "error" and "asks for a GPU" in summary["error"]


def test_a_learner_gpu_counts_as_a_gpu_request(monkeypatch, tmp_path) -> None:
    import torch

    _head_env(monkeypatch, tmp_path, {"num_gpus_per_learner": 0.5})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bootstrap, "start_node", _no_ray)
    assert bootstrap.main(["--role", "head"]) == 2


@pytest.mark.parametrize(("config", "cuda"), [({"num_gpus": 0}, False), ({}, False), ({"num_gpus": 1}, True)])
def test_ray_starts_when_no_gpu_is_asked_for_or_one_is_there(monkeypatch, tmp_path, config, cuda) -> None:
    import torch

    _head_env(monkeypatch, tmp_path, config)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(bootstrap, "start_node", _no_ray)
    with pytest.raises(_RayStarted):
        bootstrap.main(["--role", "head"])


# --- one contract: the head's address tag and the MLflow metric names -----------------------------


def test_the_address_the_bootstrap_publishes_is_the_one_the_backend_reads(monkeypatch) -> None:
    tagged: list[tuple[str, str, str]] = []

    class MlflowClient:
        def set_tag(self, run_id: str, key: str, value: str) -> None:
            tagged.append((run_id, key, value))

    tracking = types.ModuleType("mlflow.tracking")
    tracking.MlflowClient = MlflowClient
    monkeypatch.setitem(sys.modules, "mlflow.tracking", tracking)
    monkeypatch.delenv("RLQ_RAY_ADDRESS_FILE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "azureml://tracking")

    twin = MLClientTwin(**WORKSPACE)
    backend = AzureMLV2Backend(
        settings=azureml_settings(azureml_nsg_check="off", ray_auth_token="t" * 32),
        ml_client=twin,
        runs=twin.runs,
        detail_every=3,
    )
    req = parse_request({**PONG_REQUEST, "request_id": "contract-1"})
    backend.ensure_compute(req)
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    head = backend.submit(req)
    twin.run_to(head, "Running")
    monkeypatch.setenv("MLFLOW_RUN_ID", head)  # an Azure ML job's name is its MLflow run id
    bootstrap.publish_address("10.0.0.4:6379")
    [(run_id, key, value)] = tagged
    twin.set_tag(run_id, key, value)  # what MLflow stores
    backend.status(head)
    worker = twin.job(job_names(req.request_id)[1])
    assert worker.environment_variables["RLQ_RAY_HEAD_ADDRESS"] == "10.0.0.4:6379"
    assert key == contract.HEAD_ADDRESS_TAG == runs.HEAD_ADDRESS_TAG
    backend.close()


def test_the_metrics_the_trainer_logs_are_the_progress_the_backend_reads() -> None:
    logged: list[tuple[dict, int]] = []
    mlflow = types.SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))
    progress = Progress(Offsets())
    rows = []
    for steps, episodes, reward in [(500, 10, 21.5), (1000, 20, 35.25)]:
        result = {
            "num_env_steps_sampled_lifetime": steps,
            "env_runners": {
                "episode_return_mean": reward,
                "num_episodes": 10,
                "num_episodes_lifetime": episodes,
                "episode_return_min": reward - 1,
                "episode_return_max": reward + 1,
            },
        }
        rows.append(progress.row(result, time.time() - 1))
        MLflowSink(mlflow, started=False).log(rows[-1])
    latest: dict[str, float] = {}
    for metrics, _step in logged:
        latest.update(metrics)
    assert set(contract.PROGRESS_METRICS) <= set(latest)
    seen = runs._progress(RunView(metrics=latest, step=logged[-1][1]))
    assert seen is not None
    assert (seen.iteration, seen.timesteps, seen.episodes_total) == (2, 1000, 20)
    assert seen.episode_reward_mean == rows[-1]["episode_reward_mean"] == (21.5 + 35.25) / 2
    assert seen.time_total_s == rows[-1]["time_total_s"]


# --- the single-cluster topology on real Ray: a head job of two ranks ------------------------------


def _rank_env(token: str, rank: int, port: int, tmp: Path, **extra: str) -> dict[str, str]:
    """What Azure ML's MPI launcher and the v2 backend give rank ``rank`` of a two-node head job."""
    import os

    from shared.localhost.ray_head import free_port

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "RLQ_", "OMPI_", "PMI_", "MLFLOW_", "AZ_BATCH"))
        and k not in ("RANK", "NODE_RANK", "MASTER_ADDR")
    }
    start = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--object-store-memory=100000000",
    ]
    if rank == 0:
        start += [f"--temp-dir={tmp}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
    env.update(
        OMPI_COMM_WORLD_RANK=str(rank),
        AZ_BATCHAI_MPI_MASTER_NODE="127.0.0.1",
        RAY_AUTH_TOKEN=token,
        RLQ_RAY_PORT=str(port),
        RLQ_RAY_NODE_RESOURCES=json.dumps({"rlq_head": 1}),
        RLQ_RAY_EXPECT_WORKERS="0",
        RLQ_RAY_EXPECT_HEAD_NODES="2",
        RLQ_RAY_NUM_CPUS="1",
        RLQ_RAY_NODE_IP="127.0.0.1",
        RLQ_RAY_WATCH_S="1",
        RLQ_RAY_JOIN_TIMEOUT_S="300",
        RLQ_RAY_START_ARGS=json.dumps(start),
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        **extra,
    )
    return env


@pytest.mark.timeout(900)
def test_a_two_node_head_job_waits_for_its_own_second_rank(tmp_path: Path) -> None:
    """Rank 0 starts the head and waits for rank 1 (which finds it through the MPI launcher's
    master-node variable) before the trainer starts; when the trainer ends, rank 1 leaves, exit 0.
    The trainer here is refused at once (an unknown algorithm, exit 2): the join is the subject."""
    import secrets
    import subprocess
    import tempfile

    from shared.localhost.ray_head import free_port

    token, port = secrets.token_hex(32), free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlqs-", dir="/tmp"))  # Ray's socket paths must stay short
    argv = ["--run", "NOT_AN_ALGORITHM", "--env", "CartPole-v1", "--output-dir", str(tmp_path / "outputs")]
    script = str(Path(bootstrap.__file__))
    logs = {r: open(tmp_path / f"rank{r}.log", "wb") for r in (0, 1)}  # noqa: SIM115 - closed below
    procs = {}
    try:
        for r in (0, 1):
            env = _rank_env(token, r, port, ray_tmp, RLQ_TRAINER_ARGV=json.dumps(argv))
            procs[r] = subprocess.Popen(
                [sys.executable, script, "--role", "head"],
                env=env,
                cwd=tmp_path,
                stdout=logs[r],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        assert procs[0].wait(timeout=600) == 2  # the trainer's answer to an unknown --run
        assert procs[1].wait(timeout=180) == 0
        head_log = (tmp_path / "rank0.log").read_text(errors="replace")
        joined = head_log.index("2 of 2 rlq_head nodes joined")
        assert joined < head_log.index("trainer exited with 2"), head_log[-3000:]
        assert "training ended" in (tmp_path / "rank1.log").read_text(errors="replace")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for f in logs.values():
            f.close()
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_resumed_head_job_copies_the_lost_attempts_checkpoints_into_its_own(tmp_path: Path) -> None:
    lost = tmp_path / "lost"
    (lost / "iter_000004" / "learner_group").mkdir(parents=True)
    (lost / "iter_000004" / "rlq_meta.json").write_text('{"iteration": 4}')
    own = tmp_path / "own"  # the job's checkpoints output; <output dir>/checkpoints links to it
    bootstrap.link_checkpoints(str(own), tmp_path / "outputs")
    bootstrap.carry_checkpoints(str(lost), str(own))
    meta = tmp_path / "outputs" / "checkpoints" / "iter_000004" / "rlq_meta.json"
    assert json.loads(meta.read_text()) == {"iteration": 4}
    assert (lost / "iter_000004" / "rlq_meta.json").exists()  # the input is read, not moved
