"""A team's own environment through the service on a real local Ray head: the example package
(docs/examples/envs/inventory), installed into the job only by the catalog's runtime environment,
trains, is evaluated and retrained from its checkpoint; a bad env_config key fails the run within seconds naming the key."""

from __future__ import annotations

import importlib.util
import time

import pytest

from shared.composition import build, install
from shared.contracts.run import RunState
from shared.localhost import LocalHost
from tests.e2e.test_local_flow import drive, ray_jobs, topic

pytestmark = pytest.mark.ray

INVENTORY = {
    "env": "rlq_examples/Inventory-v0",
    "algorithm": "PPO",
    "env_config": {"lead_time": 2, "demand_mean": 3.0},
    # a few small iterations in the driver: this checks the path, not the learning
    "config": {
        "num_env_runners": 0,
        "train_batch_size_per_learner": 400,
        "minibatch_size": 200,
        "num_epochs": 2,
    },
}


@pytest.fixture
def local(e2e_settings):
    def make(**extra):
        w = build(e2e_settings(**extra))  # RLQ_ENV_CATALOG unset, local mode: the example catalog
        w.broker.create_subscription(w.settings.topic_name, "audit")
        return w, LocalHost.for_wiring(w)

    yield make
    install(None)


def job_runtime_env(w, request_id: str) -> dict:
    (job,) = ray_jobs(w, request_id)
    return job.runtime_env or {}


@pytest.mark.timeout(900)
def test_the_example_package_trains_through_the_catalog_is_reused_and_retrained(local):
    assert importlib.util.find_spec("rlq_inventory") is None  # not in rlq's venv: only the job has it
    w, host = local()
    for rid in ("own-env-1", "own-env-2"):
        body = {
            **INVENTORY,
            "request_id": rid,
            "stop": {"training_iteration": 3},
            "evaluate": {"episodes": 2},
        }
        w.service.enqueue(body)
        drive(host, w, rid, timeout_s=600)
    first, second = (m for m in topic(w) if m.request_id in ("own-env-1", "own-env-2"))
    for msg in (first, second):
        assert msg.status == "Completed", msg.error
        assert msg.env == "rlq_examples/Inventory-v0" and msg.iterations == 3
        assert msg.eval_reward is not None  # evaluation rebuilt the env from the checkpoint's meta
    # Ray uploads a py_modules directory once, under a hash of its files: the second job names the
    # very package the first one uploaded.
    uris = [job_runtime_env(w, rid)["py_modules"] for rid in ("own-env-1", "own-env-2")]
    assert uris[0] == uris[1] and uris[0][0].startswith("gcs://_ray_pkg_"), uris
    # a warm-started retrain of the first run goes on from its final checkpoint
    w.service.enqueue(
        {
            **INVENTORY,
            "request_id": "own-env-3",
            "restore_from": "rlq://own-env-1",
            "stop": {"training_iteration": 5},
        }
    )
    drive(host, w, "own-env-3", timeout_s=600)
    (retrain,) = [m for m in topic(w) if m.request_id == "own-env-3"]
    assert retrain.status == "Completed", retrain.error
    assert retrain.iterations == 5  # iterations 4 and 5 on top of the 3 it restored
    assert w.store.get("own-env-3").parent_request_id == "own-env-1"


@pytest.mark.timeout(300)
def test_a_key_the_environment_refuses_fails_the_run_within_seconds_naming_it(local):
    w, host = local()
    w.service.enqueue(
        {
            **INVENTORY,
            "request_id": "own-env-bad",
            "env_config": {"lead_days": 2},
            "stop": {"training_iteration": 3},
        }
    )
    started = time.monotonic()
    drive(host, w, "own-env-bad", timeout_s=240)
    (msg,) = [m for m in topic(w) if m.request_id == "own-env-bad"]
    assert msg.status == "Failed"
    assert "unexpected keyword argument 'lead_days'" in (msg.error or ""), msg.error
    assert w.store.get("own-env-bad").state is RunState.notified
    assert time.monotonic() - started < 120  # the job's start-up and the poller's ticks, not training
