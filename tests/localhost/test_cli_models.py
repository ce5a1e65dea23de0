"""``rlq models list|show|promote|rollback`` and the model line of ``rlq status``, through typer's
runner on the SQLite run store under a temp data dir (the versions registered by the core's rule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.composition import build
from shared.settings import Settings
from tests.support.models import complete

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def seeded(data_dir: Path):
    """cartpole: v1 (100) champion, v2 (90) kept, v3 (120 ± 4) promoted."""
    data_dir.mkdir(parents=True, exist_ok=True)
    w = build(Settings(data_dir=data_dir, _env_file=None))  # type: ignore[call-arg]
    complete(w.service, "cp-1", mean=100.0)
    complete(w.service, "cp-2", mean=90.0)
    complete(w.service, "cp-3", mean=120.0, std=4.0)
    return w


def test_list_shows_each_model_with_its_champion(run, seeded) -> None:
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "cartpole" in line)
    assert "v3" in row and " 3 " in row
    lines = run("models", "list", "--json").output.splitlines()
    assert [json.loads(line)["champion_version"] for line in lines] == [3]


def test_show_prints_the_champion_and_each_versions_evaluation_and_decision(run, seeded) -> None:
    result = run("models", "show", "cartpole")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "v3 · run cp-3" in out and "file:///data/runs/cp-3/checkpoints/final" in out
    assert "120.00 ± 4.00" in out  # the champion's evaluation
    assert "90.00 ± 5.00" in out and "v1: 100.00 ± 5.00" in out  # v2 against the champion then
    assert "kept the champion" in out and "promoted" in out
    detail = json.loads(run("models", "show", "cartpole", "--json").output)
    assert [v["version"] for v in detail["versions"]] == [3, 2, 1]


def test_promote_and_rollback_record_a_persons_decision(run, seeded) -> None:
    result = run("models", "promote", "cartpole", "2", "--reason", "v3 fails the new tracks", "--json")
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)  # the log lines go to stderr
    assert after["model"]["champion_version"] == 2
    last = after["model"]["history"][-1]
    assert (last["by"], last["reason"], last["from_version"]) == ("person", "v3 fails the new tracks", 3)
    result = run("models", "rollback", "cartpole", "--reason", "the tracks were wrong")
    assert result.exit_code == 0, result.output
    assert seeded.service.model("cartpole").model.champion_version == 3


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["models", "show", "nobody"], 1, "no model 'nobody'"),
        (["models", "show", "bad/name"], 2, "name"),
        (["models", "promote", "cartpole", "9", "--reason", "x"], 1, "has no version 9; it has 1 to 3"),
        (["models", "promote", "cartpole", "2", "--reason", "  "], 2, "reason"),
        (["models", "promote", "cartpole", "0", "--reason", "x"], 2, "Invalid value for 'version'"),
        (["models", "promote", "cartpole", "2"], 2, "--reason"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(run, seeded, args, code, text) -> None:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "Traceback" not in result.output
    assert seeded.service.model("cartpole").model.champion_version == 3


def test_status_says_what_the_run_did_to_its_model(run, seeded) -> None:
    from shared.contracts.completion import CompletionMessage
    from shared.contracts.run import RunRecord, RunState

    section = complete(seeded.service, "cp-4", mean=110.0)  # kept: v3 stays champion
    message = CompletionMessage(
        message_id="cp-4:completed", request_id="cp-4", status="Completed", model=section
    )
    seeded.store.insert_if_absent(RunRecord(request_id="cp-4", state=RunState.notified, completion=message))
    out = run("status", "cp-4").output
    assert "kept the champion v3 of cartpole: v4 scored 110.00 ± 5.00 against v3's 120.00 ± 4.00" in " ".join(
        out.split()
    )
