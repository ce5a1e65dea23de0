"""What this deployment lets a request ask for, checked before anything is recorded or queued;
and when a recorded request may take compute.

The caps on nodes, GPUs and duration, the enabled backends, the URL rules, the resources a
request may name (rlq's own queues and clusters, the CPUs it can get), and what
``restore_from: rlq://<id>`` resolves to. Both the queue's intake and ``POST /api/trainings`` ask
here, so a caller and the queue see the same refusals.

When: :meth:`Admission.wait_reason` before a claim (the global cap on runs in flight, the team's
quota, the waiting line's order: :mod:`shared.core.quotas`), :meth:`Admission.over_cap` after it.
A request that must wait is deferred by the intake, never refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.contracts.environments import catalog_problem
from shared.contracts.request import TrainingRequest, resource_problems
from shared.contracts.run import IN_FLIGHT, RunRecord
from shared.contracts.vm_sizes import VM_SIZES
from shared.core import quotas
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

    # --- when: the caps on runs in flight and the waiting line ------------------------------------

    def wait_reason(self, record: RunRecord) -> str | None:
        """Why ``record`` (received, about to be claimed) must wait instead of taking compute now,
        or None: every slot under the global cap is taken; its team is at its quota; or the
        deferred requests ahead of it in the line (:mod:`shared.core.quotas`), whose teams may
        start them, take every free slot."""
        settings, store, now = self.core.settings, self.core.store, self.core.clock()
        flying = store.count(IN_FLIGHT)
        free = settings.max_in_flight - flying
        if free <= 0:
            return f"waiting for a free slot: {flying} of {settings.max_in_flight} runs in flight"
        uses: dict[str, quotas.TeamUse] = {}
        if problem := self._team_problem(record, uses, now):
            return problem
        aging, mine = settings.priority_aging_s, quotas.line_key(record, now, settings.priority_aging_s)
        ahead = [
            r
            for r in store.waiting()
            if r.request_id != record.request_id
            and quotas.in_line(r, now, settings.defer_delay_s)
            and quotas.line_key(r, now, aging) < mine
            and self._team_problem(r, uses, now) is None
        ]
        if not ahead:
            return None  # two at once past this point: over_cap, after the claim, keeps the cap
        # Counted again after reading the line: a request ahead that claimed a slot meanwhile is
        # then either in the line as read or in this count, never in neither.
        flying = store.count(IN_FLIGHT)
        free = settings.max_in_flight - flying
        if free <= 0:
            return f"waiting for a free slot: {flying} of {settings.max_in_flight} runs in flight"
        if len(ahead) >= free:
            n = len(ahead)
            return (
                f"waiting in line: {n} request{'s go' if n > 1 else ' goes'} first (higher priority, "
                f"or as high and older) for {free} free slot{'s' if free > 1 else ''}"
            )
        return None

    def over_cap(self, claimed: RunRecord) -> str | None:
        """Right after ``claimed`` took its slot: why it must give the slot back, or None.

        Two deliveries may each see one free slot and claim it at once; whichever counts after
        both claims sees both and backs off (the store orders the writes, so one of any two
        racers sees the other), so no cap is ever passed.
        """
        settings = self.core.settings
        flying = self.core.store.count(IN_FLIGHT)
        if flying > settings.max_in_flight:
            return f"waiting for a free slot: {flying - 1} of {settings.max_in_flight} runs in flight"
        return self._team_problem(claimed, {}, self.core.clock(), joining=False)

    def _team_problem(
        self, record: RunRecord, uses: dict[str, quotas.TeamUse], now: datetime, *, joining: bool = True
    ) -> str | None:
        """``waiting for team quota: …`` when the record's team may not start it now; ``uses``
        keeps each team's use for the rest of one decision."""
        request, settings = record.request, self.core.settings
        if request is None or not settings.has_team_quotas:
            return None
        quota = settings.team_quota(request.team)
        if quota.max_in_flight is None and quota.gpu_hours_per_day is None:
            return None
        use = uses.get(request.team)
        if use is None:
            runs = self.core.store.team_runs(request.team, since=quotas.day_start(now))
            use = uses[request.team] = quotas.team_use(runs, now, settings)
        gpus = quotas.run_gpus(request, record.backend, settings)
        return quotas.team_problem(request.team, quota, use, gpus=gpus, joining=joining)

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
