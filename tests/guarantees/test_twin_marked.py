"""The compute twin trains nothing: its completions say so, and a deployment cannot pick it by accident.

The twin reports ``Completed`` with ``final_reward`` equal to the requested target. A consumer sees
``simulated: true`` on each completion message it produced, and the settings refuse
``RLQ_BACKEND=twin`` outside local mode unless ``RLQ_ALLOW_TWIN`` says so.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.contracts.completion import CompletionMessage
from shared.settings import Settings
from tests.support.topics import drain_topic

CARTPOLE = {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"episode_reward_mean": 150}}


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_every_twin_completion_is_marked_simulated(wired, twin, outcome):
    twin.outcome = outcome
    wired.service.intake(json.dumps({**CARTPOLE, "request_id": "sim"}).encode(), message_id="m")
    for _ in range(3):
        wired.service.poll_once()
    [message] = drain_topic(wired)
    assert message.status == ("Completed" if outcome == "succeeded" else "Failed")
    assert message.simulated is True
    assert json.loads(message.model_dump_json())["simulated"] is True  # on the wire, for consumers


def test_a_canceled_twin_run_is_marked_simulated_too(wired, twin):
    wired.service.intake(json.dumps({**CARTPOLE, "request_id": "stop"}).encode(), message_id="m")
    wired.service.cancel("stop")
    for _ in range(3):
        wired.service.poll_once()
    [message] = drain_topic(wired)
    assert message.status == "Canceled" and message.simulated is True


def test_completions_default_to_not_simulated():
    message = CompletionMessage(message_id="r:completed", request_id="r", status="Completed")
    assert message.simulated is False


def test_the_twin_is_refused_outside_local_mode_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("RLQ_BACKEND", "twin")
    monkeypatch.setenv("RLQ_LOCAL_MODE", "false")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, data_dir=tmp_path)
    text = str(caught.value)
    assert "RLQ_ALLOW_TWIN=true" in text and "RLQ_BACKEND" in text and "ray, azureml" in text
    monkeypatch.setenv("RLQ_ALLOW_TWIN", "true")
    assert Settings(_env_file=None, data_dir=tmp_path).backend == "twin"


def test_the_twin_is_allowed_in_local_mode_and_real_backends_everywhere(tmp_path):
    assert Settings(_env_file=None, data_dir=tmp_path, backend="twin", local_mode=True).backend == "twin"
    assert Settings(_env_file=None, data_dir=tmp_path, backend="ray", local_mode=False).backend == "ray"
