"""``rlq submit --team --priority`` and what ``rlq status`` shows of a request waiting for its team."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.request import TrainingRequest
from shared.contracts.run import RunRecord
from shared.settings import QUEUE_NAME

pytestmark = pytest.mark.usefixtures("cli_env")


def queued(data_dir: Path) -> list:
    with SqliteBroker(data_dir / "queue.sqlite3") as broker:
        return broker.peek(QUEUE_NAME)


def test_submit_sends_the_team_and_the_priority(run, data_dir):
    result = run(
        "submit", "--env", "CartPole-v1", "--team", "team-a", "--priority", "high", "--request-id", "t-1"
    )
    assert result.exit_code == 0, result.output
    (message,) = queued(data_dir)
    body = json.loads(message.body)
    assert (body["team"], body["priority"]) == ("team-a", "high")


def test_submit_with_a_bad_priority_names_the_field_and_sends_nothing(run, data_dir):
    result = run("submit", "--env", "CartPole-v1", "--priority", "urgent")
    assert result.exit_code == 2
    assert "priority" in result.output and "'high', 'normal' or 'low'" in result.output
    assert queued(data_dir) == []


def test_status_shows_why_a_request_waits(run, data_dir):
    data_dir.mkdir(parents=True, exist_ok=True)
    request = TrainingRequest(request_id="w-1", env="CartPole-v1", team="team-a", priority="low")
    why = "waiting for team quota: team team-a has 2 of 2 runs in flight"
    with SqliteRunStore(data_dir / "runs.sqlite3") as s:
        s.insert_if_absent(RunRecord(request_id="w-1", request=request, deferrals=3, waiting=why))
    result = run("status", "w-1")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "waiting for team quota: team team-a has 2 of 2 runs in flight" in text
    assert "team-a · priority low" in text
