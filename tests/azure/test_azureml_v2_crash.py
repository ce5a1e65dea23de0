"""Crash matrix on the SDK v2 path: a real SIGKILL in the two windows where a second job could start.

* between creating the head job and recording its name on the run (the job exists in the
  workspace, the run record does not know it): at the service's ``submitted`` fault point, and
  inside the create call itself (stored in the workspace, the call never returned), on intake and
  on the poller's submit after the clusters came up;
* between the head's address appearing and the worker job being recorded: right before the worker
  job is stored, and right after.

Each time a fresh process (``aml_crash_driver.py``, the production wiring) takes over from what the
killed one left — the SQLite run store and queue, and the workspace twin's file — and the run goes
on with exactly one head job and at most one worker job. The workspace refuses a second job with a
taken name, so the job count alone cannot show a backend that asks twice: the twin's call log
counts the ``jobs.create_or_update`` calls, one per job over every process together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.adapters.compute.azureml.jobs import job_names
from shared.adapters.compute.azureml.runs import HEAD_ADDRESS_TAG
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.run import RunState
from tests.azure.aml_crash_driver import SEED, workspace

REPO = Path(__file__).resolve().parents[2]
RID = SEED["request_id"]
HEAD, WORKERS = job_names(RID)


def drive(data_dir: Path, action: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RLQ_")}
    full.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", "tests.azure.aml_crash_driver", str(data_dir), action],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def killed(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stderr[-2000:])


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def clusters_up(data_dir: Path) -> None:
    from azure.ai.ml.entities import AmlCompute, NetworkSettings

    twin = workspace(data_dir)
    net = NetworkSettings(vnet_name="rlq-vnet", subnet="aml")
    twin.add_compute(
        AmlCompute(name="head-gpu", size="STANDARD_NC4AS_T4_V3", max_instances=1, network_settings=net)
    )
    twin.add_compute(
        AmlCompute(name="worker-cpu", size="STANDARD_D4AS_V5", max_instances=4, network_settings=net)
    )


def record(data_dir: Path):
    store = SqliteRunStore(data_dir / "runs.sqlite3")
    try:
        return store.get(RID)
    finally:
        store.close()


def finish(data_dir: Path) -> None:
    """Head running with its address, workers joined, then the head completes: one of each job."""
    twin = workspace(data_dir)
    twin.run_to(HEAD, "Running")
    twin.set_tag(HEAD, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    for _ in range(3):
        ok(drive(data_dir, "poll"))
    twin.write_summary(HEAD, {"stop_reason": "reward_reached"})
    twin.run_to(HEAD, "Completed")
    ok(drive(data_dir, "poll"))
    rec = record(data_dir)
    assert rec.state is RunState.notified and rec.run_id == HEAD
    assert rec.completion.checkpoint_path == f"azureml://jobs/{HEAD}/outputs/checkpoints/paths/final"
    assert twin.jobs_per_request() == {f"{RID}/head": 1, f"{RID}/workers": 1}
    assert creates(twin) == {HEAD: 1, WORKERS: 1}


def creates(twin) -> dict[str, int]:
    """``jobs.create_or_update`` calls per job name, as the workspace twin logged them."""
    names = [target for method, target in twin.calls() if method == "jobs.create_or_update"]
    return {name: names.count(name) for name in sorted(set(names))}


@pytest.mark.parametrize("kill", [{"RLQ_FAULT_AT": "submitted"}, {"RLQ_TEST_KILL": "after:head"}], ids=str)
def test_kill_after_creating_the_head_job_on_intake_never_yields_two(tmp_path: Path, kill: dict) -> None:
    data_dir = tmp_path / "rlq"
    data_dir.mkdir()
    clusters_up(data_dir)
    killed(drive(data_dir, "intake", **kill))
    assert workspace(data_dir).jobs_per_request() == {f"{RID}/head": 1}
    assert record(data_dir).run_id is None  # the job exists, the run does not know it
    time.sleep(1.2)  # the dead delivery's claim goes stale (lock 1 s); the queue redelivers
    assert ok(drive(data_dir, "intake")) == "submitted"
    assert workspace(data_dir).jobs_per_request() == {f"{RID}/head": 1}
    assert creates(workspace(data_dir)) == {HEAD: 1}  # the redelivery adopted it without asking again
    finish(data_dir)


def test_kill_after_creating_the_head_job_on_the_pollers_submit_never_yields_two(tmp_path: Path) -> None:
    data_dir = tmp_path / "rlq"
    data_dir.mkdir()
    assert ok(drive(data_dir, "intake")) == "provisioning"  # clusters being created: nothing submitted
    twin = workspace(data_dir)
    twin.provision("head-gpu")
    twin.provision("worker-cpu")
    killed(drive(data_dir, "poll", RLQ_TEST_KILL="after:head"))
    assert twin.jobs_per_request() == {f"{RID}/head": 1}
    assert record(data_dir).state is RunState.provisioning
    time.sleep(1.2)  # the dead poller's claim goes stale
    ok(drive(data_dir, "poll"))
    assert record(data_dir).state is RunState.submitted
    assert twin.jobs_per_request() == {f"{RID}/head": 1}
    assert creates(twin) == {HEAD: 1}
    finish(data_dir)


@pytest.mark.parametrize("kill", ["before:workers", "after:workers"])
def test_kill_between_the_heads_address_and_the_worker_job_never_yields_two(
    tmp_path: Path, kill: str
) -> None:
    data_dir = tmp_path / "rlq"
    data_dir.mkdir()
    clusters_up(data_dir)
    assert ok(drive(data_dir, "intake")) == "submitted"
    twin = workspace(data_dir)
    twin.run_to(HEAD, "Running")
    twin.set_tag(HEAD, HEAD_ADDRESS_TAG, "10.0.0.4:6379")
    killed(drive(data_dir, "poll", RLQ_TEST_KILL=kill))
    expected = {f"{RID}/head": 1, **({f"{RID}/workers": 1} if kill.startswith("after") else {})}
    assert twin.jobs_per_request() == expected
    ok(drive(data_dir, "poll"))  # a fresh process: creates the worker job, or adopts the one there
    assert twin.jobs_per_request() == {f"{RID}/head": 1, f"{RID}/workers": 1}
    finish(data_dir)
