"""What this deployment lets a request ask for, checked before anything is recorded or queued.

The caps on nodes, GPUs and duration, the enabled backends, the URL rules, the resources a
request may name (rlq's own queues and clusters, the CPUs it can get), and what
``restore_from: rlq://<id>`` resolves to. Both the queue's intake and ``POST /api/trainings`` ask
here, so a caller and the queue see the same refusals.
"""

from __future__ import annotations

from typing import Any

from shared.contracts.environments import catalog_problem
from shared.contracts.request import TrainingRequest, resource_problems
from shared.contracts.vm_sizes import VM_SIZES
from shared.core.context import Core
from shared.errors import Forbidden, InvalidRequest
from shared.urlguard import check_request_urls


class Admission:
    def __init__(self, core: Core) -> None:
        self.core = core

    def backend_name(self, request: TrainingRequest) -> str:
        return request.compute.backend or self.core.settings.backend

    def check_caps(self, request: TrainingRequest) -> None:
        """:class:`Forbidden`, naming the field and the cap, when the request asks for more than allowed;
        :class:`InvalidRequest` naming ``env`` for an id in no namespace of the environment catalog."""
        settings, backend = self.core.settings, request.compute.backend
        if problem := catalog_problem(request.env, settings.environment_catalog):
            raise InvalidRequest([{"field": "env", "message": problem}])
        if problem := self._size_problem(request):
            raise Forbidden(problem)
        if backend is not None and backend not in self.core.compute:
            raise Forbidden(
                f"compute.backend: {backend!r} is not enabled here; enabled: {', '.join(sorted(self.core.compute))}"
            )
        found = check_request_urls(
            request, local_mode=settings.local_mode, allow_hosts=settings.webhook_allow_hosts
        )  # static rules only: no DNS at intake; delivery resolves and pins each address
        found += resource_problems(request, **self._own_resources(request))
        if found:
            raise Forbidden("; ".join(f"{p['field']}: {p['message']}" for p in found))

    def _size_problem(self, request: TrainingRequest) -> str | None:
        settings, compute = self.core.settings, request.compute
        if compute.workers is not None or compute.head is not None:
            if compute.total_nodes() > settings.max_nodes_per_request:
                return f"compute: {compute.total_nodes()} nodes requested; the cap is {settings.max_nodes_per_request}"
            if compute.total_gpus() > settings.max_gpus_per_request:
                return f"compute: {compute.total_gpus()} GPUs requested; the cap is {settings.max_gpus_per_request}"
        duration = compute.max_run_duration_s
        if duration is not None and duration > settings.max_run_duration_s:
            return (
                f"compute.max_run_duration_s: {duration} is over the cap of {settings.max_run_duration_s} s"
            )
        budget = request.stop.time_total_s
        if budget is not None and budget > settings.max_run_duration_s:
            return f"stop.time_total_s: {budget} is over the cap of {settings.max_run_duration_s} s"
        return None

    def _own_resources(self, request: TrainingRequest) -> dict[str, Any]:
        """rlq's own names and the CPUs a request can get, for :func:`shared.contracts.request.resource_problems`."""
        # Any: keyword arguments of resource_problems, of three different types
        settings, compute = self.core.settings, request.compute
        max_cpus: float | None
        if compute.head is not None or compute.workers is not None:
            max_cpus = compute.total_cpus()
        elif self.backend_name(request) == "azureml":
            max_cpus = (
                VM_SIZES[settings.head_vm_size].cpus
                + VM_SIZES[settings.worker_vm_size].cpus * settings.worker_node_count
            )
        else:
            max_cpus = settings.ray_num_cpus if self.backend_name(request) == "ray" else None
        return {
            "own_queues": {
                settings.queue_name: "request queue",
                settings.rejected_queue_name: "rejected-request queue",
                settings.topic_name: "completion topic",
                settings.subscription_name: "notifier subscription",
            },
            "own_clusters": {settings.head_cluster: "head", settings.worker_cluster: "worker"},
            "max_cpus": max_cpus,
        }

    def resolve_restore(self, request: TrainingRequest) -> tuple[TrainingRequest, str | None]:
        """``restore_from: rlq://<id>``: the request with that run's final checkpoint URI (as its
        backend reported it) and the id, for lineage; any other request as it is. Refused, naming
        ``restore_from``, when that run is unknown, did not complete, has no checkpoint, or ran on
        another backend than this request would (its checkpoint lives there)."""
        champions = self.core.champions()
        if champions is not None:  # the model's champion now; model://<name> becomes rlq://<its run>
            request = champions.with_champion(request)
        elif request.restore_model is not None:
            why = f"{request.restore_from}: this deployment keeps no models"
            raise InvalidRequest([{"field": "restore_from", "message": why}])
        parent_id = request.restore_parent
        if parent_id is None:
            return request, None

        def refused(why: str) -> InvalidRequest:
            return InvalidRequest([{"field": "restore_from", "message": f"{request.restore_from}: {why}"}])

        if parent_id == request.request_id:
            raise refused("a run cannot restore from itself")
        parent = self.core.store.get(parent_id)
        if parent is None:
            raise refused(f"no training request {parent_id!r}")
        if parent.completion is None or parent.completion.status != "Completed":
            raise refused(
                f"run {parent_id!r} did not complete ({parent.status or parent.state.value}); only a "
                "completed run's final checkpoint can be restored"
            )
        checkpoint = parent.completion.checkpoint_path
        if not checkpoint:
            raise refused(f"run {parent_id!r} completed without a checkpoint")
        backend = self.backend_name(request)
        if parent.backend is not None and parent.backend != backend:
            raise refused(
                f"run {parent_id!r} ran on backend {parent.backend!r}, where its checkpoint lives; this "
                f"request would run on {backend!r} (set compute.backend to {parent.backend!r})"
            )
        try:
            resolved = TrainingRequest.model_validate({**request.model_dump(), "restore_from": checkpoint})
        except ValueError as err:
            raise refused(f"the checkpoint URI of run {parent_id!r} cannot be restored: {err}") from None
        return resolved, parent_id
