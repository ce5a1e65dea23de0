"""Azure Machine Learning (SDK v1) backend: a Ray head cluster (GPU) + worker cluster (CPU) in a VNet.

This is the article's setup, driven by the service instead of a notebook: two ``AmlCompute``
clusters inside the VNet, and one ``ReinforcementLearningEstimator`` run per request.

Deprecated upstream: SDK v1 is past end of support and the RL estimator is being decommissioned
(https://aka.ms/rldeprecation; no support after June 2022; SDK v1 support ended on 30 June 2026), and
the estimator's images start Ray 0.8 while the trainer needs Ray 2.60. So this backend
(``RLQ_BACKEND=azureml_v1``) no longer submits: :meth:`AzureMLRayBackend.submit` raises a permanent
error naming the retirement and the SDK v2 backend (``RLQ_BACKEND=azureml``,
:mod:`shared.adapters.azureml.v2`), so a request fails at once instead of being redelivered. Runs
submitted earlier are still found, polled and canceled. The constructor logs the retirement once per
process.

What the service relies on, and how it is kept:

* ``ensure_compute`` never waits for provisioning (up to 20 minutes): a missing cluster is
  created with ``ComputeTarget.create`` and Azure ML queues the run until nodes come up. A cluster
  that cannot serve the request — failed provisioning, another VNet/subnet, another VM size, too
  few nodes — is a :class:`ComputeError` that says so. The subnet's NSG is checked (cached) for
  the inbound rules Azure ML needs (:func:`missing_nsg_rules`).
* ``submit`` is idempotent on ``request_id``: runs carry the tag ``rlq_request_id`` and the
  experiment is searched for it before anything is submitted.
* The trainer gets an argument vector, never a shell string. The RL service assembles the head's
  command line itself (the article had to wrap JSON values in extra quotes for a shell), so the
  head runs ``trainer/train.py --argv-from-env RLQ_TRAINER_ARGV`` and the real, seed-compatible
  argv travels JSON-encoded in that environment variable.
* Head and workers run one image (``Settings.azureml_base_image`` + a conda file made from
  ``trainer/requirements.txt``): Ray needs the same Python and Ray on every node.
* SDK errors are translated here: HTTP 408/429/5xx and connection faults → ``TransientError``;
  authorization → ``PermanentError``; quota and compute mismatches → ``ComputeError``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from shared import trainer_args
from shared.adapters.azureml.clusters import (
    Clusters,
    NsgGuard,
    check_existing_cluster,
    job_timeout_s,
    network_client_from_settings,
    resolve_clusters,
    worker_shm_size,
)
from shared.adapters.azureml.environment import CONDA_FILE, TRAINER_DIR, stage_trainer
from shared.adapters.azureml.errors import readable, sdk_errors
from shared.adapters.azureml.gateway import AmlGateway, RunLike, SdkGateway, workspace_from_settings
from shared.errors import ComputeError, PermanentError
from shared.models import Progress, TrainingRequest
from shared.ports import JobState, JobStatus
from shared.settings import Settings

log = logging.getLogger(__name__)

DEPRECATION_URL = "https://aka.ms/rldeprecation"
RUN_TAG = "rlq_request_id"
ARGV_ENV = trainer_args.ARGV_ENV
ENTRY_SCRIPT = "trainer/train.py"
RAY_ADDRESS = "localhost:6379"  # the RL service starts Ray's head on its default port
HEAD_SHM_SIZE = "24g"
CLUSTER_COORDINATION_TIMEOUT_S = 3600

# Azure ML run status -> JobState. CancelRequested / NotResponding are not terminal yet: the
# poller keeps asking (and its stall detector covers a run that stays silent).
STATUS_TO_STATE: dict[str, JobState] = {
    "NotStarted": "pending",
    "Unapproved": "pending",
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
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Canceled"})

RETIRED = (
    "RLQ_BACKEND=azureml_v1: the Azure ML SDK v1 ReinforcementLearningEstimator is retired "
    f"({DEPRECATION_URL}; SDK v1 support ended on 30 June 2026) and its images start Ray 0.8, not the "
    "trainer's Ray 2.60, so nothing is submitted. Use the SDK v2 backend: RLQ_BACKEND=azureml "
    "(azure-ai-ml command jobs on the same head and worker clusters; docs/azure.md)."
)

_warned = False
_warn_lock = threading.Lock()


def _warn_deprecated_once() -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    log.warning("%s", RETIRED)


# --- the backend --------------------------------------------------------------------------------


class AzureMLRayBackend:
    """:class:`shared.ports.ComputeBackend` on Azure ML SDK v1's ReinforcementLearningEstimator."""

    name = "azureml_v1"

    def __init__(
        self,
        *,
        settings: Settings,
        workspace_factory: Callable[[], Any] | None = None,
        gateway: AmlGateway | None = None,
        network_factory: Callable[[], Any] | None = None,
        trainer_dir: Path | str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        nsg_cache_s: float = 900.0,
        metrics_every: int = 3,
    ) -> None:
        _warn_deprecated_once()
        self.settings = settings
        self.gateway: AmlGateway = gateway or SdkGateway(
            workspace_factory or (lambda: workspace_from_settings(settings))
        )
        self.nsg = NsgGuard(
            settings,
            network_factory or (lambda: network_client_from_settings(settings)),
            monotonic=monotonic,
            cache_s=nsg_cache_s,
        )
        self.trainer_dir = Path(trainer_dir) if trainer_dir is not None else TRAINER_DIR
        self.metrics_every = max(1, metrics_every)
        self._ticks: OrderedDict[str, int] = OrderedDict()  # status calls per run (bounded)
        self._experiments: OrderedDict[str, str] = OrderedDict()  # request_id -> experiment (bounded)
        self._stage: Path | None = None
        self._lock = threading.Lock()

    # --- ComputeBackend ---------------------------------------------------------------------

    def ensure_compute(self, request: TrainingRequest) -> None:
        """Reuse or create both clusters (never waiting) and check the subnet's NSG."""
        self._remember(request)
        check_restore(request)
        c = self.clusters(request)
        if c.workers.node_count > 0 and not c.vnet:
            raise ComputeError(
                "a Ray head with worker nodes needs a virtual network that lets them talk: set "
                "RLQ_AZUREML_VNET (and RLQ_AZUREML_SUBNET) or compute.vnet in the request"
            )
        self._ensure_cluster(c.head.name, c.head.vm_size, c.head.min_nodes, c.head.max_nodes, 1, c)
        if c.workers.node_count > 0:
            self._ensure_cluster(
                c.workers.name,
                c.workers.vm_size,
                c.workers.min_nodes,
                c.workers.max_nodes,
                c.workers.node_count,
                c,
            )
        if c.vnet:
            self.nsg.check(c)

    def find(self, request_id: str) -> str | None:
        """The run already submitted for ``request_id``, in the experiment this process saw it in.

        Unknown experiment (a fresh process): None — :meth:`submit` searches its experiment again.
        """
        experiment = self._experiments.get(request_id)
        if experiment is None:
            return None
        return self._find(experiment, request_id)

    def submit(self, request: TrainingRequest) -> str:
        """Refused for good: the RL estimator is retired (a run already submitted is found first)."""
        self._remember(request)
        existing = self._find(request.experiment, request.request_id)
        if existing is not None:
            return existing
        raise PermanentError(RETIRED, reason="AzureMLV1Retired")

    def status(self, run_id: str) -> JobStatus:
        with sdk_errors(f"status of run {run_id}"):
            run = self.gateway.get_run(run_id)
            aml_status = str(run.get_status())
            portal = _maybe(run.get_portal_url)
            ticks = self._ticks[run_id] = self._ticks.get(run_id, 0) + 1
            self._ticks.move_to_end(run_id)
            while len(self._ticks) > 4096:
                self._ticks.popitem(last=False)
            # The recursive metrics listing is the expensive call: every few ticks, and at the end.
            terminal = aml_status in TERMINAL_STATUSES
            fetch = terminal or ticks % self.metrics_every == 1 or self.metrics_every == 1
            metrics = (run.get_metrics(recursive=True) or {}) if fetch else {}
        state = STATUS_TO_STATE.get(aml_status)
        if state is None:
            log.warning(
                "run %s has an Azure ML status rlq does not know (%r); treating it as pending",
                run_id,
                aml_status,
            )
            state = "pending"
        metrics_run_id, series = _reward_series(metrics, run_id)
        progress = _progress(series)
        if terminal:
            self._ticks.pop(run_id, None)
        if aml_status not in TERMINAL_STATUSES:
            return JobStatus(state=state, progress=progress, portal_url=portal)
        with sdk_errors(f"details of run {run_id}"):
            details = run.get_details() or {}
            head = _output_run(run, metrics_run_id)
            summary = self._summary(head, series, details)
        error = _details_error(details) if aml_status == "Failed" else None
        if error and not summary.get("error"):
            summary["error"] = error
        if aml_status == "Canceled":
            summary.setdefault("stop_reason", "canceled")
        return JobStatus(
            state=state,
            progress=progress,
            summary=summary,
            error=error or summary.get("error"),
            portal_url=portal,
        )

    def cancel(self, run_id: str) -> None:
        with sdk_errors(f"cancel run {run_id}"):
            run = self.gateway.get_run(run_id)
            if str(run.get_status()) in TERMINAL_STATUSES | {"CancelRequested"}:
                return
            run.cancel()
        log.info("Azure ML run %s: cancel requested", run_id)

    def close(self) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    # --- building blocks (public: the tests assert on the real SDK objects they return) -----

    def clusters(self, request: TrainingRequest) -> Clusters:
        def workspace_rg() -> str:
            with sdk_errors("read the workspace"):
                return self.gateway.workspace_ids()[1]

        return resolve_clusters(self.settings, request, workspace_resource_group=workspace_rg)

    def provisioning_config(self, *, vm_size: str, min_nodes: int, max_nodes: int, clusters: Clusters) -> Any:
        from azureml.core.compute import AmlCompute

        with sdk_errors("build the cluster configuration"):
            return AmlCompute.provisioning_configuration(
                vm_size=vm_size,
                min_nodes=min_nodes,
                max_nodes=max_nodes,
                vnet_resourcegroup_name=clusters.vnet_resource_group if clusters.vnet else None,
                vnet_name=clusters.vnet,
                subnet_name=clusters.subnet if clusters.vnet else None,
                remote_login_port_public_access="Disabled",
                tags={"managed-by": "rlq"},
            )

    def job_argv(self, request: TrainingRequest, clusters: Clusters | None = None) -> list[str]:
        """:func:`shared.trainer_args.build_argv` with the seed's worker and GPU counts filled in."""
        c = clusters or self.clusters(request)
        config = trainer_args.seed_cluster_config(
            request.config, total_cpus=c.total_cpus, head_gpus=c.head_gpus
        )
        return trainer_args.build_argv(
            request,
            output_dir="outputs",
            config=config,
            ray_address=RAY_ADDRESS,
        )

    def build_estimator(self, request: TrainingRequest) -> Any:
        """The real ``ReinforcementLearningEstimator`` for ``request`` (nothing is sent)."""
        from azureml.contrib.train.rl import Ray, ReinforcementLearningEstimator, WorkerConfiguration
        from azureml.core import Environment

        c = self.clusters(request)
        source = self.stage_source()
        argv = self.job_argv(request, c)
        with sdk_errors("build the estimator"):
            env = Environment(name="rlq-trainer")
            env.docker.base_image = self.settings.azureml_base_image
            workers = None
            if c.workers.node_count > 0:
                workers = WorkerConfiguration(
                    node_count=c.workers.node_count,
                    compute_target=c.workers.name,
                    use_gpu=False,
                    conda_dependencies_file=CONDA_FILE,
                    shm_size=worker_shm_size(c.workers.vm_size),
                )
            return ReinforcementLearningEstimator(
                source_directory=str(source),
                entry_script=ENTRY_SCRIPT,
                script_params={"--argv-from-env": ARGV_ENV},
                compute_target=c.head.name,
                environment=env,
                conda_dependencies_file=CONDA_FILE,
                use_gpu=c.head_gpus > 0,
                rl_framework=Ray(),
                worker_configuration=workers,
                cluster_coordination_timeout_seconds=CLUSTER_COORDINATION_TIMEOUT_S,
                max_run_duration_seconds=job_timeout_s(request, self.settings),
                shm_size=HEAD_SHM_SIZE,
                environment_variables={ARGV_ENV: json.dumps(argv), "PYTHONUNBUFFERED": "1"},
            )

    def stage_source(self) -> Path:
        """A folder holding only ``trainer/`` and the conda file: the run's snapshot.

        The function app's own folder holds its deployed packages; uploading it would be slow and
        could exceed the snapshot limit, so the trainer is copied out once per process.
        """
        with self._lock:
            if self._stage is not None and self._stage.exists():
                return self._stage
            stage = stage_trainer(self.trainer_dir)
            self._stage = stage
            return stage

    # --- internals ------------------------------------------------------------------------

    def _remember(self, request: TrainingRequest) -> None:
        with self._lock:
            self._experiments[request.request_id] = request.experiment
            self._experiments.move_to_end(request.request_id)
            while len(self._experiments) > 4096:
                self._experiments.popitem(last=False)

    def _find(self, experiment: str, request_id: str) -> str | None:
        with sdk_errors(f"look up request {request_id} in experiment {experiment}"):
            runs = self.gateway.find_runs(experiment, {RUN_TAG: request_id})
            if not runs:
                return None
            live = [r for r in runs if str(r.get_status()) not in ("Failed", "Canceled")]
        return str((live or runs)[0].id)

    def _ensure_cluster(
        self, name: str, vm_size: str, min_nodes: int, max_nodes: int, nodes_needed: int, c: Clusters
    ) -> None:
        with sdk_errors(f"look up cluster {name}"):
            info = self.gateway.get_compute(name)
        if info is None:
            config = self.provisioning_config(
                vm_size=vm_size, min_nodes=min_nodes, max_nodes=max_nodes, clusters=c
            )
            with sdk_errors(f"create cluster {name}"):
                self.gateway.create_compute(name, config)
            log.info(
                "creating Azure ML cluster %s (%s, %d-%d nodes, vnet %s/%s); runs queue until it is up",
                name,
                vm_size,
                min_nodes,
                max_nodes,
                c.vnet,
                c.subnet,
            )
            return
        check_existing_cluster(name, info, vm_size=vm_size, nodes_needed=nodes_needed, clusters=c)

    def _summary(
        self, head: RunLike | None, series: dict[str, list[float]], details: Mapping[str, Any]
    ) -> dict[str, Any]:
        rewards = series.get("episode_reward_mean", [])
        summary: dict[str, Any] = {}
        if rewards:
            summary.update(final_reward=rewards[-1], best_reward=max(rewards), iterations=len(rewards))
        trainer = _download_json(head, "outputs/summary.json") if head is not None else None
        if trainer:
            for key in (
                "stop_reason",
                "timesteps",
                "duration_s",
                "eval_reward",
                "replay_path",
                "error",
                "algorithm",
                "env",
            ):
                if trainer.get(key) is not None:
                    summary[key] = trainer[key]
            for key in ("final_reward", "best_reward", "iterations"):
                if key not in summary and trainer.get(key) is not None:
                    summary[key] = trainer[key]
        if "duration_s" not in summary:
            duration = _duration_s(details)
            if duration is not None:
                summary["duration_s"] = duration
        if head is not None:
            rel = checkpoint_relpath(trainer.get("checkpoint_path") if trainer else None, _file_names(head))
            if rel:
                summary["checkpoint_path"] = self.output_uri(head.id, rel)
        return summary

    def output_uri(self, run_id: str, path: str) -> str:
        """``azureml://`` URI of a file or folder in a run's outputs (the workspace artifact store)."""
        s = self.settings
        sub, rg, ws = s.azureml_subscription_id, s.azureml_resource_group, s.azureml_workspace
        if not (sub and rg and ws):
            sub, rg, ws = self.gateway.workspace_ids()
        return (
            f"azureml://subscriptions/{sub}/resourcegroups/{rg}/workspaces/{ws}/datastores/"
            f"workspaceartifactstore/paths/ExperimentRun/dcid.{run_id}/{path.strip('/')}"
        )


# --- helpers (pure) --------------------------------------------------------------------------


def check_restore(request: TrainingRequest) -> None:
    """Warm starts are not offered here: the trainer restores from a directory on its own node.

    A checkpoint in the workspace (``azureml://``) would have to be mounted into the head's
    container as a data input, which the v1 RL estimator cannot pass through an argument vector.
    """
    if request.restore_from:
        raise ComputeError(
            f"restore_from ({request.restore_from[:80]}) is not supported by the Azure ML SDK v1 backend: the "
            "trainer restores from a local directory and v1 cannot mount the checkpoint for it; retrain "
            "without restore_from, or use RLQ_BACKEND=ray with a checkpoint path the cluster can read"
        )


def _maybe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a portal link is a nicety
        return None


def _as_list(value: Any) -> list[float]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _reward_series(metrics: Mapping[str, Any], run_id: str) -> tuple[str | None, dict[str, list[float]]]:
    """(run id, {metric: history}) of the run that logged ``episode_reward_mean``.

    ``get_metrics(recursive=True)`` answers ``{run_id: {name: value | [values]}}``; the trainer
    logs on the head's child run. A flat ``{name: value}`` answer is taken as the run's own.
    """
    if metrics and all(not isinstance(v, Mapping) for v in metrics.values()):
        metrics = {run_id: metrics}
    best: tuple[str | None, dict[str, list[float]]] = (None, {})
    for rid, values in metrics.items():
        if not isinstance(values, Mapping) or "episode_reward_mean" not in values:
            continue
        series = {k: _as_list(values[k]) for k in ("episode_reward_mean", "episodes_total") if k in values}
        if len(series.get("episode_reward_mean", [])) >= len(best[1].get("episode_reward_mean", [])):
            best = (rid, series)
    return best


def _progress(series: dict[str, list[float]]) -> Progress | None:
    rewards = series.get("episode_reward_mean") or []
    if not rewards:
        return None
    episodes = series.get("episodes_total") or []
    return Progress(
        iteration=len(rewards),
        episode_reward_mean=rewards[-1],
        episodes_total=int(episodes[-1]) if episodes else None,
    )


def _output_run(run: RunLike, metrics_run_id: str | None) -> RunLike | None:
    """The child run that ran the trainer (its outputs hold checkpoints and summary.json)."""
    try:
        children = list(run.get_children())
    except Exception:  # noqa: BLE001
        children = []
    for child in children:
        if metrics_run_id and child.id == metrics_run_id:
            return child
    for child in children:
        if "head" in str(child.id).lower():
            return child
    return run


def _file_names(run: RunLike) -> list[str]:
    try:
        return list(run.get_file_names())
    except Exception:  # noqa: BLE001
        return []


def _download_json(run: RunLike, name: str) -> dict[str, Any] | None:
    if name not in _file_names(run):
        return None
    with tempfile.TemporaryDirectory(prefix="rlq-aml-") as tmp:
        path = Path(tmp) / "file.json"
        try:
            run.download_file(name, output_file_path=str(path))
            data = json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # noqa: BLE001 - the metrics still give the essentials
            log.info("run %s: could not read %s (%s)", run.id, name, type(err).__name__)
            return None
    return data if isinstance(data, dict) else None


def checkpoint_relpath(trainer_path: str | None, file_names: Iterable[str]) -> str | None:
    """The checkpoint's path inside the run's artifacts (``outputs/checkpoints/...``)."""
    if trainer_path:
        path = re.sub(r"^file://", "", trainer_path)
        idx = path.find("/outputs/")
        if idx >= 0:
            return path[idx + 1 :].rstrip("/")
        if path.startswith("outputs/"):
            return path.rstrip("/")
    dirs = sorted(
        {n.split("/")[2] for n in file_names if n.startswith("outputs/checkpoints/") and n.count("/") >= 3}
    )
    if not dirs:
        return None
    pick = "final" if "final" in dirs else dirs[-1]
    return f"outputs/checkpoints/{pick}"


def _details_error(details: Mapping[str, Any]) -> str | None:
    err = details.get("error")
    if not err:
        return None
    if isinstance(err, Mapping):
        inner = err.get("error", err)
        if isinstance(inner, Mapping):
            code = inner.get("code")
            message = inner.get("message") or inner.get("messageFormat") or json.dumps(inner)[:500]
            return readable(f"{code}: {message}" if code else str(message))
    return readable(str(err))


def _duration_s(details: Mapping[str, Any]) -> float | None:
    from datetime import datetime

    start, end = details.get("startTimeUtc"), details.get("endTimeUtc")
    if not (start and end):
        return None
    try:
        a = datetime.fromisoformat(str(start))
        b = datetime.fromisoformat(str(end))
    except ValueError:
        return None
    return max((b - a).total_seconds(), 0.0)
