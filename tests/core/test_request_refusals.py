"""What intake refuses by name on both ways in (the queue and the HTTP API's enqueue), and the VM
table that every size check reads."""

from __future__ import annotations

import json

import pytest

from shared.contracts.parsing import load_json
from shared.contracts.request import HeadCluster, WorkerCluster
from shared.contracts.run import RunState
from shared.contracts.vm_sizes import (
    DEFAULT_HEAD_VM_SIZE,
    DEFAULT_WORKER_VM_SIZE,
    SUPERSEDED_VM_SIZES,
    VM_SIZES,
)
from shared.errors import InvalidRequest, PermanentError
from shared.settings import Settings

BASE = {"env": "CartPole-v1", "stop": {"training_iteration": 2}}


def raw(**extra) -> bytes:
    return json.dumps({**BASE, **extra}).encode()


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"env": "CartPole-v1", "env": "CartPole-v0", "stop": {"training_iteration": 2}}', "env"),
        (
            b'{"env": "CartPole-v1", "stop": {"training_iteration": 2, "training_iteration": 9}}',
            "stop.training_iteration",
        ),
        (
            b'{"env": "CartPole-v1", "stop": {"training_iteration": 2}, "tags": {"a": "1", "a": "2"}}',
            "tags.a",
        ),
    ],
)
def test_a_repeated_key_is_refused_naming_it_on_both_ways_in(wired, body, field):
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue(body)  # the HTTP API's call
    assert err.value.errors[0]["field"] == field and "more than once" in err.value.errors[0]["message"]
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 0
    record = wired.service.intake(body, message_id="dup-1")  # the queue trigger's call
    assert record is not None and record.state is RunState.rejected and field in record.error


def test_load_json_names_the_path_of_the_first_repeat():
    with pytest.raises(ValueError, match=r"^config\.model\.dim: "):
        load_json('{"config": {"model": {"dim": 42, "dim": 84}}}')
    assert load_json('{"a": [{"b": 1}, {"b": 2}]}') == {"a": [{"b": 1}, {"b": 2}]}  # same key, other objects


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"config": {"num_workers": True}}, "config"),
        ({"config": {"model": {"dim": False}}}, "config"),
        ({"stop": {"timesteps_total": True}}, "stop.timesteps_total"),
        ({"stop": {"episode_reward_mean": True}}, "stop.episode_reward_mean"),
        ({"compute": {"workers": {"node_count": True, "max_nodes": 4}}}, "compute.workers.node_count"),
        ({"compute": {"head": {"max_nodes": True}}}, "compute.head.max_nodes"),
        ({"compute": {"max_run_duration_s": "3600"}}, "compute.max_run_duration_s"),
        ({"evaluate": {"episodes": True}}, "evaluate.episodes"),
        ({"evaluate": {"gif": 1}}, "evaluate.gif"),
    ],
)
def test_a_boolean_or_string_where_a_number_goes_is_refused_naming_the_field(wired, extra, field):
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue(raw(**extra))
    assert field in {e["field"] for e in err.value.errors}, err.value.errors


def test_booleans_stay_allowed_where_the_trainer_takes_them(wired):
    rid = wired.service.enqueue(
        raw(config={"use_kl_loss": True, "model": {"use_lstm": False, "framestack": True}})
    )
    assert wired.service.get(rid).request.config["use_kl_loss"] is True


def test_a_retired_teams_connector_is_refused_at_intake_naming_the_replacement(wired):
    url = "https://contoso.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d"
    with pytest.raises(PermanentError) as err:
        wired.service.enqueue(raw(notify={"teams": [url]}))
    assert err.value.description.startswith("notify.teams.0: ")
    assert "Teams Workflows webhook" in err.value.description


def test_a_retired_vm_size_is_refused_naming_its_replacements(wired):
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue(raw(compute={"head": {"vm_size": "STANDARD_NC6"}}))
    (problem,) = err.value.errors
    assert problem["field"] == "compute.head.vm_size"
    assert "retired" in problem["message"]
    assert "STANDARD_NC4AS_T4_V3" in problem["message"] and "allow_size_substitution" in problem["message"]


def test_the_seed_sizes_run_on_named_replacements_only_when_the_request_allows_it(wired):
    seed = {"head": {"vm_size": "Standard_NC6"}, "workers": {"vm_size": "Standard_D2_V2", "node_count": 2}}
    rid = wired.service.enqueue(raw(compute={**seed, "allow_size_substitution": True}))
    compute = wired.service.get(rid).request.compute
    assert (compute.head.vm_size, compute.workers.vm_size) == ("STANDARD_NC4AS_T4_V3", "STANDARD_D2AS_V5")
    assert compute.allow_size_substitution is True  # the stored request says a size was substituted


def test_every_replacement_is_offered_and_keeps_the_gpu_count():
    gpus_before = {"STANDARD_NC6": 1, "STANDARD_NC12": 2, "STANDARD_NC24": 4, "STANDARD_NC6S_V3": 1}
    for name, (why, replacements) in SUPERSEDED_VM_SIZES.items():
        assert name not in VM_SIZES and why and replacements
        assert all(r in VM_SIZES for r in replacements), name
        if name in gpus_before:
            assert VM_SIZES[replacements[0]].gpus == gpus_before[name], name


def test_defaults_are_current_sizes():
    assert HeadCluster().vm_size == DEFAULT_HEAD_VM_SIZE and VM_SIZES[DEFAULT_HEAD_VM_SIZE].gpus == 1
    assert WorkerCluster().vm_size == DEFAULT_WORKER_VM_SIZE and VM_SIZES[DEFAULT_WORKER_VM_SIZE].gpus == 0
    s = Settings(_env_file=None)
    assert s.head_vm_size in VM_SIZES and s.worker_vm_size in VM_SIZES


def test_a_request_file_with_a_repeated_key_is_refused_before_anything_is_sent(tmp_path):
    from shared.cli.request import build_request

    path = tmp_path / "req.json"
    path.write_text('{"env": "CartPole-v1", "stop": {"training_iteration": 2}, "config": {"lr": 1, "lr": 2}}')
    with pytest.raises(InvalidRequest) as err:
        build_request(file=path)
    assert (
        "config.lr" in err.value.errors[0]["message"] and "more than once" in err.value.errors[0]["message"]
    )
    with pytest.raises(InvalidRequest, match="lr"):
        build_request(config='{"lr": 1, "lr": 2}')


def test_a_retired_default_size_in_the_settings_fails_at_start_up_naming_the_setting():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, head_vm_size="STANDARD_NC6")
    assert "head_vm_size" in str(err.value) and "STANDARD_NC4AS_T4_V3" in str(err.value)
    assert "allow_size_substitution" not in str(err.value)  # a request option, not a setting
    assert Settings(_env_file=None, worker_vm_size="standard_f8s_v2").worker_vm_size == "STANDARD_F8S_V2"
