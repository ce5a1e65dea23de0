"""Azure Machine Learning (SDK v2, ``azure-ai-ml``) backend: Ray on one or two ``AmlCompute`` clusters.

``RLQ_BACKEND=azureml``. Per request, one or two ``command()`` jobs that start Ray themselves
through ``trainer/bootstrap.py``:

* the **head job** on the head cluster (``instance_count`` = ``compute.head.node_count``, 1 unless
  the request says more): rank 0 runs ``ray start --head`` (token auth on), publishes the head's
  address as an MLflow tag on its own run (an address, never a secret), then runs the trainer,
  whose learner is placed on a head node; other ranks join it;
* with worker nodes (``compute.workers.node_count`` > 0, the seed's topology), the **worker job** on
  the worker cluster (``instance_count`` = worker nodes), submitted by the poller once the head's
  address is there: each node joins the head and hosts env runners. A request naming no worker
  cluster (and a deployment whose ``RLQ_WORKER_NODE_COUNT`` is 0, the default) runs as the head
  job alone: no second cluster, no VNet between clusters, no wait for workers.

What the service relies on, and how it is kept:

* **Never blocking a Function.** ``ensure_compute`` creates a missing cluster with
  ``compute.begin_create_or_update`` and does not wait on the poller; until the request's clusters report
  ``Succeeded`` it answers :class:`~shared.ports.ComputePending` and the run stays ``provisioning``
  (the poller asks again). A cluster that fails to provision fails the run with Azure's reason; one
  with another VM size, a smaller max or another VNet is reported, never resized.
* **One job per request.** Job names are unique in a workspace and derived from ``request_id``
  (:func:`job_names`): ``find`` is a ``jobs.get``; ``submit`` looks the job up (``jobs.get``) and
  adopts it when it exists, and only then creates it (adopting it again if a racing process won
  the name). A redelivered request or a poller that died between creating a job and recording it
  never starts a second one.
* **Cheap polling.** One ``jobs.get`` of the head per tick; at most one more call (MLflow metrics,
  or the worker job's status) every ``detail_every`` ticks, so metrics are read less often than
  status.
* **The secret stays out of the job.** The Ray token is read on the nodes from the workspace Key
  Vault with the clusters' managed identity: the jobs carry the vault and secret *names* only.

What a job is (its name, clusters, command, environment, tags) is built by
:class:`~shared.adapters.compute.azureml.jobs.JobBuilder`; a run is read back (its metrics, tags
and summary) through :class:`~shared.adapters.compute.azureml.runs.RunReader`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.adapters.compute.azureml.clusters import (
    Clusters,
    ComputeInfo,
    NsgGuard,
    check_existing_cluster,
    network_client_from_settings,
    workspace_coordinates,
)
from shared.adapters.compute.azureml.errors import readable, sdk_errors
from shared.adapters.compute.azureml.jobs import (
    COMPUTE_TAG,
    RUN_TAG,
    JobBuilder,
    checkpoint_uri,
    checkpoints_uri,
    job_names,
    worker_job_of,
)
from shared.adapters.compute.azureml.runs import (
    HEAD_ADDRESS_TAG,
    MlflowRunReader,
    RunReader,
    RunView,
    _progress,
)
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress
from shared.contracts.trainer import ARGV_ENV, JobEnd, TrainerSummary
from shared.errors import ComputeError
from shared.ports import Checkpoint, ComputePending, JobState, JobStatus
from shared.settings import Settings

log = logging.getLogger(__name__)


# Every v2 job status (azure.ai.ml._restclient ... JobStatus) -> JobState. CancelRequested,
# NotResponding and Paused are not terminal: the poller keeps asking, and its stall detector covers a
# run that stays silent. NotResponding may go back to any earlier state (the enum's own note).
STATUS_TO_STATE: dict[str, JobState] = {
    "NotStarted": "pending",
    "Starting": "pending",
    "Provisioning": "pending",
    "Preparing": "pending",
    "Queued": "pending",
    "Running": "running",
    "Finalizing": "running",
    "CancelRequested": "running",
    "NotResponding": "running",
    "Paused": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Canceled": "stopped",
    "Unknown": "pending",
}
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Canceled"})
RAN_STATUSES = frozenset({"Running", "Finalizing", "NotResponding"})


def ml_client_from_settings(settings: Settings) -> Any:
    """``MLClient`` with the Function's managed identity (``DefaultAzureCredential``)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    sub, rg, ws = workspace_coordinates(settings)
    return MLClient(DefaultAzureCredential(), subscription_id=sub, resource_group_name=rg, workspace_name=ws)


def _is_not_found(err: BaseException) -> bool:
    return type(err).__name__ == "ResourceNotFoundError" or getattr(err, "status_code", None) == 404


def _is_name_taken(err: BaseException) -> bool:
    """Azure's answer to a job created under a name that exists (UserError, or a 409)."""
    text = str(err).lower()
    return getattr(err, "status_code", None) == 409 or "already exists" in text


@dataclass
class _Tracked:
    """What this process remembers about one head job between ticks (bounded, rebuilt on demand)."""

    ticks: int = 0
    progress: Progress | None = None
    worker_submitted: bool = False
    worker_error: str | None = None
    ran: bool = False  # seen Running (or NotResponding): the job had its nodes
    not_responding: bool = False  # seen NotResponding: Azure lost the job's heartbeat


class AzureMLV2Backend:
    """:class:`shared.ports.ComputeBackend` on ``azure-ai-ml`` command jobs (the run id is the head job's name)."""

    name = "azureml"

    def __init__(
        self,
        *,
        settings: Settings,
        ml_client: Any = None,
        runs: RunReader | None = None,
        network_factory: Callable[[], Any] | None = None,
        trainer_dir: Path | str | None = None,
        detail_every: int = 3,
    ) -> None:
        self.settings = settings
        self._ml_client = ml_client
        self._runs = runs
        self.nsg = NsgGuard(settings, network_factory or (lambda: network_client_from_settings(settings)))
        self.builder = JobBuilder(
            settings,
            workspace_resource_group=lambda: str(getattr(self.ml, "resource_group_name", "") or ""),
            trainer_dir=trainer_dir,
        )
        self.detail_every = max(1, detail_every)
        self._lock = threading.Lock()
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()
        self._requests: OrderedDict[str, TrainingRequest] = OrderedDict()

    @property
    def ml(self) -> Any:
        with self._lock:
            if self._ml_client is None:
                self._ml_client = ml_client_from_settings(self.settings)
            return self._ml_client

    @property
    def runs(self) -> RunReader:
        with self._lock:
            if self._runs is None:
                self._runs = MlflowRunReader(self._ml_client or ml_client_from_settings(self.settings))
            return self._runs

    # --- ComputeBackend ---------------------------------------------------------------------

    def ensure_compute(self, request: TrainingRequest) -> ComputePending | None:
        """Reuse or start creating both clusters (never waiting); pending until both are Succeeded."""
        clusters = self.builder.clusters(request)
        if clusters.workers.node_count > 0 and not clusters.vnet:
            raise ComputeError(
                "a Ray head with worker nodes needs a virtual network that lets them talk: set "
                "RLQ_AZUREML_VNET (and RLQ_AZUREML_SUBNET) or compute.vnet in the request"
            )
        if clusters.vnet:
            self.nsg.check(clusters)
        waiting = [
            self._ensure_cluster(
                clusters.head.name,
                clusters.head.vm_size,
                clusters.head.min_nodes,
                clusters.head.max_nodes,
                clusters.head.node_count,
                clusters,
                tier=clusters.head.tier,
            )
        ]
        if clusters.workers.node_count > 0:
            waiting.append(
                self._ensure_cluster(
                    clusters.workers.name,
                    clusters.workers.vm_size,
                    clusters.workers.min_nodes,
                    clusters.workers.max_nodes,
                    clusters.workers.node_count,
                    clusters,
                    tier=clusters.workers.tier,
                )
            )
        pending = [w for w in waiting if w]
        return ComputePending("; ".join(pending)) if pending else None

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        head, _ = job_names(request_id, attempt)
        job = self._get_job(head)
        return head if job is not None else None

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        """Create the head job (adopting it when the name exists); the worker job follows from ``status``.

        Attempt k > 1 (its job was lost with its machines) is its own job, ``job_names(id, k)``,
        that resumes from the checkpoints attempt k - 1 wrote (:meth:`JobBuilder.build_head_job`).
        """
        head_name, _ = job_names(request.request_id, attempt)
        self._remember(request)
        self._create(
            self.builder.build_head_job(request, attempt),
            what=f"head job of {request.request_id} (attempt {attempt})",
        )
        return head_name

    def status(self, run_id: str) -> JobStatus:
        with sdk_errors(f"status of job {run_id}"):
            head = self.ml.jobs.get(run_id)
        aml_status = str(head.status or "Unknown")
        state = STATUS_TO_STATE.get(aml_status)
        if state is None:
            log.warning("job %s has an Azure ML status rlq does not know (%r); pending", run_id, aml_status)
            state = "pending"
        portal = getattr(head, "studio_url", None)
        t = self._track(run_id)
        t.ticks += 1
        t.ran = t.ran or aml_status in RAN_STATUSES
        t.not_responding = t.not_responding or aml_status == "NotResponding"
        worker_name = self._worker_name(run_id, head)
        if aml_status in TERMINAL_STATUSES:
            return self._final(run_id, head, aml_status, state, portal, worker_name, t)
        if state == "running" and worker_name and not t.worker_submitted:
            self._maybe_submit_workers(run_id, head, worker_name, t)  # the one extra call this tick
        elif t.ticks % self.detail_every == 0:
            if worker_name and t.worker_submitted and (t.ticks // self.detail_every) % 2 == 0:
                self._check_workers(worker_name, t)
            else:
                view = self._read_run(run_id)
                if view is not None:
                    t.progress = _progress(view) or t.progress
        return JobStatus(state=state, progress=t.progress, portal_url=portal, error=t.worker_error)

    def cancel(self, run_id: str) -> None:
        """``jobs.begin_cancel`` for the head job and its worker job (not waiting on the pollers)."""
        head_name = run_id
        worker_name = head_name[: -len("-head")] + "-workers" if head_name.endswith("-head") else None
        for name in (head_name, worker_name):
            if name:
                self._cancel(name)

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the workspace answers, in one ``workspaces.get``
        of the configured workspace with the function's identity (the read the MLflow reader
        makes anyway; AzureML Data Scientist on the workspace). Nothing is created or started.
        The SDK takes no per-call timeout: the readiness gate (:mod:`shared.core.readiness`) bounds
        how long the answer waits for it."""
        ml = self.ml
        name = str(getattr(ml, "workspace_name", "") or self.settings.azureml_workspace)
        with sdk_errors(f"health check of workspace {name}"):
            ws = ml.workspaces.get(name)
        group = getattr(ws, "resource_group", None) or getattr(ml, "resource_group_name", "")
        return f"Azure ML workspace {getattr(ws, 'name', None) or name} in {group} answers"

    def close(self) -> None:
        self.builder.close()

    # --- internals ------------------------------------------------------------------------

    def _ensure_cluster(
        self,
        name: str,
        vm_size: str,
        min_nodes: int,
        max_nodes: int,
        nodes_needed: int,
        c: Clusters,
        *,
        tier: str = "dedicated",
    ) -> str | None:
        """None when the cluster can take jobs now; what it waits for while it is being created."""
        with sdk_errors(f"look up cluster {name}"):
            try:
                existing = self.ml.compute.get(name)
            except Exception as err:
                if not _is_not_found(err):
                    raise
                existing = None
        if existing is None:
            entity = self.builder.build_compute(
                name=name, vm_size=vm_size, min_nodes=min_nodes, max_nodes=max_nodes, clusters=c, tier=tier
            )
            with sdk_errors(f"create cluster {name}"):
                self.ml.compute.begin_create_or_update(entity)  # the poller is not waited on
            log.info("creating Azure ML cluster %s (%s, %d-%d nodes)", name, vm_size, min_nodes, max_nodes)
            return f"cluster {name} is being created"
        info = compute_info(existing)
        check_existing_cluster(name, info, vm_size=vm_size, nodes_needed=nodes_needed, clusters=c)
        if info.provisioning_state.lower() != "succeeded":
            return f"cluster {name} is {info.provisioning_state or 'being created'}"
        return None

    def _get_job(self, name: str) -> Any | None:
        with sdk_errors(f"look up job {name}"):
            try:
                return self.ml.jobs.get(name)
            except Exception as err:
                if _is_not_found(err):
                    return None
                raise

    def _create(self, job: Any, *, what: str) -> Any:
        """Adopt the job named ``job.name`` when there is one (``jobs.get``); else create it.

        Looked up first, so a job an earlier process created is adopted whatever Azure would answer
        to a second create; a create that still meets a taken name (another process created it
        between the look-up and the create) adopts that job too. Never a second job.
        """
        existing = self._get_job(job.name)
        if existing is not None:
            log.info("job %s exists already; adopting it", job.name)
            return existing
        with sdk_errors(f"submit the {what}"):
            try:
                created = self.ml.jobs.create_or_update(job)
            except Exception as err:
                if not _is_name_taken(err):
                    raise
                log.info("job %s was created meanwhile; adopting it", job.name)
                return self.ml.jobs.get(job.name)
        log.info("submitted %s as Azure ML job %s", what, created.name)
        return created

    def _cancel(self, name: str) -> None:
        with sdk_errors(f"cancel job {name}"):
            try:
                job = self.ml.jobs.get(name)
            except Exception as err:
                if _is_not_found(err):
                    return
                raise
            if str(job.status) in TERMINAL_STATUSES | {"CancelRequested"}:
                return
            self.ml.jobs.begin_cancel(name)
        log.info("Azure ML job %s: cancel requested", name)

    def _worker_name(self, run_id: str, head: Any) -> str | None:
        """The worker job's name when this request has workers (read from the head job itself)."""
        request = self._request_for(head)
        if request is None or self.builder.clusters(request).workers.node_count <= 0:
            return None
        return worker_job_of(run_id)

    def _request_for(self, head: Any) -> TrainingRequest | None:
        tags = dict(getattr(head, "tags", None) or {})
        request_id = tags.get(RUN_TAG)
        if request_id is None:
            return None
        request = self._requests.get(request_id)
        if request is not None:
            return request
        # A fresh process: rebuild what the worker job needs from the head job's own definition.
        argv = json.loads((getattr(head, "environment_variables", None) or {}).get(ARGV_ENV, "[]") or "[]")
        data: dict[str, Any] = {"request_id": request_id, "experiment": tags.get("rlq_experiment", "rlq")}
        for flag, key in (("--run", "algorithm"), ("--env", "env")):
            if flag in argv:
                data[key] = argv[argv.index(flag) + 1]
        if tags.get(COMPUTE_TAG):
            data["compute"] = json.loads(tags[COMPUTE_TAG])
        from shared.contracts.parsing import parse_request

        try:
            request = parse_request(data)
        except Exception:  # noqa: BLE001 - without the request the defaults name the clusters
            return None
        self._remember(request)
        return request

    def _maybe_submit_workers(self, run_id: str, head: Any, worker_name: str, t: _Tracked) -> None:
        """Read the head's run (one call); once its address is there, create the worker job.

        A worker job that exists already (an earlier process created it and died before
        remembering) is found and adopted by :meth:`_create`.
        """
        view = self._read_run(run_id)
        if view is None:
            return
        t.progress = _progress(view) or t.progress
        address = view.tags.get(HEAD_ADDRESS_TAG)
        if not address:
            return  # the head has not published its address yet
        request = self._request_for(head)
        assert request is not None
        self._create(
            self.builder.build_worker_job(request, address, run_id),
            what=f"worker job of {request.request_id}",
        )
        t.worker_submitted = True

    def _check_workers(self, worker_name: str, t: _Tracked) -> None:
        job = self._get_job(worker_name)
        status = str(getattr(job, "status", "") or "") if job is not None else "missing"
        if status in ("Failed", "Canceled", "missing"):
            t.worker_error = (
                f"the worker job {worker_name} is {status}; training goes on with the head's CPUs"
            )
            log.warning("%s", t.worker_error)

    def _read_run(self, run_id: str) -> RunView | None:
        with sdk_errors(f"metrics of job {run_id}"):
            return self.runs.get_run(run_id)

    def _final(
        self,
        run_id: str,
        head: Any,
        aml_status: str,
        state: JobState,
        portal: str | None,
        worker_name: str | None,
        t: _Tracked,
    ) -> JobStatus:
        if worker_name:
            self._cancel(worker_name)  # the head ended for whatever reason: its workers go too
        view = self._read_run(run_id)
        progress = (_progress(view) if view is not None else None) or t.progress
        summary: dict[str, Any] = {}
        if progress is not None:
            summary.update(
                final_reward=progress.episode_reward_mean,
                iterations=progress.iteration,
                timesteps=progress.timesteps,
            )
        with sdk_errors(f"summary of job {run_id}"):
            trainer = self.runs.summary(run_id) or {}
        for key in (
            "stop_reason",
            "timesteps",
            "duration_s",
            "eval_reward",
            "error",
            "final_reward",
            "best_reward",
            "iterations",
            "algorithm",
            "env",
        ):
            if trainer.get(key) is not None:
                summary[key] = trainer[key]
        if aml_status == "Completed" or trainer.get("checkpoint_path"):
            summary["checkpoint_path"] = checkpoint_uri(run_id)
        lost = self._lost(run_id, aml_status, trainer, view, progress, t)
        if lost is not None:
            with self._lock:
                self._tracked.pop(run_id, None)
            return JobStatus(
                state="failed",
                progress=progress,
                error=lost,
                portal_url=portal,
                end=JobEnd.lost,
                checkpoint=Checkpoint(uri=checkpoints_uri(run_id)),
            )
        error = None
        if aml_status == "Failed":
            error = (
                summary.get("error") or f"Azure ML job {run_id} failed; see {portal or 'its logs in studio'}"
            )
            summary.setdefault("error", error)
        if aml_status == "Canceled":
            summary.setdefault("stop_reason", "canceled")
        with self._lock:
            self._tracked.pop(run_id, None)
        return JobStatus(
            state=state,
            progress=progress,
            summary=TrainerSummary.read(summary),
            error=error,
            portal_url=portal,
        )

    def _lost(
        self,
        run_id: str,
        aml_status: str,
        trainer: dict[str, Any],
        view: RunView | None,
        progress: Progress | None,
        t: _Tracked,
    ) -> str | None:
        """Why the job was lost with its nodes (``JobEnd.lost``), or None for any other end.

        Azure ML ends a job whose low-priority node was preempted, or whose node stopped
        answering (``NotResponding``), ``Failed`` (docs/azure.md): ``Failed`` after the job ran
        (seen running, or its run has metrics or the head's address) with no summary from the
        trainer — the trainer's own exits (a training failure, bad arguments) always write one
        with ``stop_reason`` or ``error`` and keep their meaning. A job that failed before it ran
        (its image, its code) is no loss of nodes either.
        """
        if aml_status != "Failed" or trainer.get("stop_reason") or trainer.get("error"):
            return None
        ran = t.ran or progress is not None or bool(view is not None and view.tags.get(HEAD_ADDRESS_TAG))
        if not ran:
            return None
        how = "stopped answering (NotResponding) and" if t.not_responding else ""
        return (
            f"Azure ML job {run_id} {how} failed without the trainer's exit: its node was preempted or lost"
        ).replace("  ", " ")

    def _track(self, run_id: str) -> _Tracked:
        with self._lock:
            t = self._tracked.get(run_id)
            if t is None:
                t = self._tracked[run_id] = _Tracked()
            self._tracked.move_to_end(run_id)
            while len(self._tracked) > 4096:
                self._tracked.popitem(last=False)
            return t

    def _remember(self, request: TrainingRequest) -> None:
        with self._lock:
            self._requests[request.request_id] = request
            self._requests.move_to_end(request.request_id)
            while len(self._requests) > 4096:
                self._requests.popitem(last=False)


# --- helpers (pure) ----------------------------------------------------------------------------


def compute_info(compute: Any) -> ComputeInfo:
    """The parts of an ``AmlCompute`` entity (from ``compute.get``) the checks look at."""
    network = getattr(compute, "network_settings", None)
    subnet = getattr(network, "subnet", None) if network is not None else None
    vnet = getattr(network, "vnet_name", None) if network is not None else None
    vnet_rg = None
    if subnet and "/" in subnet:  # a full subnet id
        m = re.search(
            r"/resourceGroups/([^/]+)/.*/virtualNetworks/([^/]+)/subnets/([^/]+)", subnet, re.IGNORECASE
        )
        if m:
            vnet_rg, vnet, subnet = m.group(1), m.group(2), m.group(3)
    errors = getattr(compute, "provisioning_errors", None)
    return ComputeInfo(
        name=str(compute.name),
        compute_type=str(getattr(compute, "type", "") or ""),
        provisioning_state=str(getattr(compute, "provisioning_state", "") or ""),
        vm_size=getattr(compute, "size", None),
        vnet_name=vnet,
        subnet_name=subnet,
        vnet_resource_group=vnet_rg,
        max_nodes=getattr(compute, "max_instances", None),
        errors=readable(str(errors), 300) if errors else None,
    )
