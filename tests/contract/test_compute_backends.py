"""The ComputeBackend contract against each backend (see ``compute_backend_contract.py``).

* ``twin``: :class:`shared.adapters.compute.compute_twin.ComputeTwin` (SQLite);
* ``ray``: :class:`shared.adapters.compute.ray_jobs.RayJobsBackend` on the session's real local head (token
  auth on), running the stand-in trainer of ``tests/ray/conftest.py`` (same contract as the real
  one, a second per run);
* ``azureml``: :class:`shared.adapters.compute.azureml.v2.AzureMLV2Backend` over its workspace twin
  (:class:`tests.support.azureml_twin.MLClientTwin`), the twin's clock stepped by the case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.contracts.parsing import parse_request
from shared.contracts.request import TrainingRequest
from tests.contract.compute_backend_contract import Case, ComputeBackendContract
from tests.ray.conftest import (
    STANDIN_HANG,
    STANDIN_OK,
    head_settings,
    standin_package,  # noqa: F401 - the stand-in trainer fixture, shared
)
from tests.support.azureml import WORKSPACE, azureml_settings
from tests.support.ray_submits import record_submit_jobs, submit_job_calls

CARTPOLE: dict[str, Any] = {"algorithm": "IMPALA", "env": "CartPole-v1", "stop": {"training_iteration": 2}}


def _request(request_id: str, **extra: Any) -> TrainingRequest:
    return parse_request({**CARTPOLE, "request_id": request_id, **extra})


# --- the compute twin ------------------------------------------------------------------------


def twin_case(tmp_path: Path) -> Case:
    from shared.adapters.compute.compute_twin import ComputeTwin

    twin = ComputeTwin(tmp_path / "twin.sqlite3", polls_to_finish=3)  # a job ends on its third status call
    case = Case(
        backend=twin,
        make_request=lambda request_id, long_running: _request(request_id),
        jobs_for=lambda rid: twin.jobs_per_request().get(rid, 0),
        submit_calls_for=lambda rid: twin.submits().get(rid, 0),
    )
    case.cleanup.append(twin.close)
    return case


# --- the Ray backend on a real local head ----------------------------------------------------


def ray_case(head: Any, standin: Path, journal: Path) -> Case:
    from shared.adapters.compute.ray_jobs import RayJobsBackend, submission_id_for

    # the first submit uploads the working dir: give a busy machine more than the default 10 s
    settings = head_settings(head, status_timeout_s=60.0)
    backend = RayJobsBackend(address=None, settings=settings, trainer_package=standin)

    def make(request_id: str, long_running: bool) -> TrainingRequest:
        return _request(request_id, config={"seed": STANDIN_HANG if long_running else STANDIN_OK})

    def jobs_for(request_id: str) -> int:
        wanted = submission_id_for(request_id)
        jobs = backend._call(lambda c: c.list_jobs(), what="list jobs")
        return sum(1 for j in jobs if getattr(j, "submission_id", None) == wanted)

    undo = record_submit_jobs(journal)
    case = Case(
        backend=backend,
        make_request=make,
        jobs_for=jobs_for,
        submit_calls_for=lambda rid: submit_job_calls(journal)[submission_id_for(rid)],
        timeout_s=90.0,
        poll_s=0.3,
    )
    case.cleanup.append(undo)
    return case


# --- the Azure ML backend over its workspace twin --------------------------------------------


def azureml_case() -> Case:  # noqa: C901 - the twin's closures (submit, status, cancel, counts) beside the settings they share
    from shared.adapters.compute.azureml.jobs import RUN_TAG
    from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
    from tests.support.azureml_twin import MLClientTwin

    settings = azureml_settings(
        azureml_vnet=None,
        azureml_subnet="default",
        azureml_nsg_check="off",
        azureml_key_vault_uri="https://rlq-kv.vault.azure.net/",
        ray_auth_token="contract-ray-token",
    )
    twin = MLClientTwin(**WORKSPACE)
    backend = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs, detail_every=1)
    long_runs: set[str] = set()

    def make(request_id: str, long_running: bool) -> TrainingRequest:
        request = _request(request_id, compute={"workers": {"node_count": 0, "max_nodes": 0}})
        if long_running:
            long_runs.add(request_id)
        return request

    def ready(request: TrainingRequest) -> None:
        for _ in range(3):
            pending = backend.ensure_compute(request)
            if pending is None:
                return
            for name in ("head-gpu", "worker-cpu"):
                try:
                    twin.provision(name)
                except KeyError:
                    pass  # not asked for
        raise AssertionError(f"compute never became ready for {request.request_id}")

    def advance(run_id: str) -> None:
        """One tick of the workspace: the job moves on, the trainer logs what it did."""
        job = twin.job(run_id)
        request_id = job.tags.get(RUN_TAG, "")
        if job.status == "Running" and request_id in long_runs:
            return  # runs until it is canceled (CancelRequested moves on below)
        status = twin.step(run_id)
        if status == "Running":
            twin.log_metrics(run_id, 2, episode_reward_mean=21.5, timesteps=2000, time_total_s=2.0)
        if status == "Finalizing":
            twin.write_summary(
                run_id,
                {
                    "final_reward": 21.5,
                    "best_reward": 21.5,
                    "iterations": 2,
                    "stop_reason": "iterations_limit",
                },
            )

    def jobs_for(request_id: str) -> int:
        return sum(n for key, n in twin.jobs_per_request().items() if key.startswith(f"{request_id}/"))

    case = Case(
        backend=backend,
        make_request=make,
        jobs_for=jobs_for,
        submit_calls_for=lambda rid: create_calls(twin, rid),
        ready=ready,
        advance=advance,
    )
    case.cleanup.append(backend.close)
    return case


def create_calls(twin: Any, request_id: str) -> int:
    """``jobs.create_or_update`` calls for the request's jobs, from the workspace twin's call log."""
    from shared.adapters.compute.azureml.jobs import job_names

    names = set(job_names(request_id))
    return sum(1 for method, name in twin.calls() if method == "jobs.create_or_update" and name in names)


# --- the suite, once per backend -------------------------------------------------------------


class TestComputeBackends(ComputeBackendContract):
    @pytest.fixture(
        params=[
            "twin",
            pytest.param("ray", marks=pytest.mark.ray),
            "azureml",
        ]
    )
    def case(self, request: pytest.FixtureRequest, tmp_path: Path):
        if request.param == "twin":
            c = twin_case(tmp_path)
        elif request.param == "ray":
            c = ray_case(
                request.getfixturevalue("ray_head"),
                request.getfixturevalue("standin_package"),
                tmp_path / "submit-job-calls.jsonl",
            )
        else:
            c = azureml_case()
        yield c
        for undo in reversed(c.cleanup):
            undo()
