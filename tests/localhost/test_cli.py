"""The ``rlq`` CLI through typer's runner, on a real SQLite queue and store under a temp data dir."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.cli.request import build_request
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress, RunRecord, RunState
from shared.settings import QUEUE_NAME

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("cli_env")


def queued(data_dir: Path) -> list:
    with SqliteBroker(data_dir / "queue.sqlite3") as broker:
        return broker.peek(QUEUE_NAME)


def store(data_dir: Path) -> SqliteRunStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteRunStore(data_dir / "runs.sqlite3")


def request(rid: str, **kw) -> TrainingRequest:
    return TrainingRequest(request_id=rid, env="CartPole-v1", stop={"episode_reward_mean": 150}, **kw)


# --- submit ------------------------------------------------------------------------------------


def test_submit_rejects_bad_fields_with_exit_2_names_them_and_sends_nothing(run, data_dir):
    result = run("submit", "--run", "A2C", "--env", "CartPole-v9", "--stop", '{"time_total_s": 60}')

    assert result.exit_code == 2
    assert "algorithm" in result.output and "'A2C' is not allowed" in result.output
    assert "env" in result.output and "CartPole-v9" in result.output
    assert "nothing was sent" in result.output
    assert "Traceback" not in result.output
    assert queued(data_dir) == []


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--config", "{not json"], "config"),
        (["--stop", "[1, 2]"], "stop"),
        (["--tag", "no-equals-sign"], "tags.0"),
        (["--config", '{"rm_rf": 1}'], "config"),
        (["--webhook", "ftp://example.com/x"], "notify.webhooks"),
        (["--max-run-duration-s", "5"], "compute.max_run_duration_s"),
    ],
)
def test_submit_field_errors(run, data_dir, args, field):
    result = run("submit", "--env", "CartPole-v1", *args)

    assert result.exit_code == 2, result.output
    assert field in result.output
    assert queued(data_dir) == []


def test_submit_over_a_cap_is_refused_and_not_sent(run, data_dir):
    result = run("submit", "--env", "CartPole-v1", "--worker-nodes", "40")

    assert result.exit_code == 2
    assert "cap is 16" in result.output
    assert queued(data_dir) == []


def test_submit_puts_exactly_one_message_on_the_queue(run, data_dir):
    result = run(
        "submit",
        "--run",
        "APPO",
        "--env",
        "PongNoFrameskip-v4",
        "--config",
        '{"num_workers": 13, "lr": 0.0005}',
        "--stop",
        '{"episode_reward_mean": 18, "time_total_s": 3600}',
        "--experiment",
        "pong",
        "--request-id",
        "req-42",
        "--head-vm-size",
        "standard_nc4as_t4_v3",
        "--worker-vm-size",
        "STANDARD_D2AS_V5",
        "--worker-nodes",
        "6",
        "--max-run-duration-s",
        "7200",
        "--webhook",
        "https://hooks.example.com/a",
        "--webhook",
        "https://hooks.example.com/b",
        "--reply-to",
        "replies",
        "--tag",
        "team=rl",
        "--tag",
        "ticket=7",
        "--evaluate-episodes",
        "3",
        "--gif",
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "req-42"
    (msg,) = queued(data_dir)
    assert msg.message_id == "req-42"
    body = json.loads(msg.body)
    assert (body["algorithm"], body["env"], body["experiment"]) == ("APPO", "PongNoFrameskip-v4", "pong")
    assert body["config"] == {"num_workers": 13, "lr": 0.0005}
    assert body["stop"]["episode_reward_mean"] == 18 and body["stop"]["time_total_s"] == 3600
    assert body["compute"]["head"]["vm_size"] == "STANDARD_NC4AS_T4_V3"
    assert body["compute"]["workers"]["node_count"] == 6 and body["compute"]["workers"]["max_nodes"] == 6
    assert body["compute"]["max_run_duration_s"] == 7200
    assert body["notify"]["webhooks"] == ["https://hooks.example.com/a", "https://hooks.example.com/b"]
    assert body["reply_to"] == "replies"
    assert body["tags"] == {"team": "rl", "ticket": "7"}
    assert body["evaluate"] == {"episodes": 3, "gif": True}
    assert store(data_dir).get("req-42").state is RunState.received


def test_submit_from_a_file_with_flags_overriding(run, data_dir, tmp_path):
    path = tmp_path / "request.json"
    path.write_text(
        json.dumps(
            {
                "request_id": "from-file",
                "env": "CartPole-v1",
                "algorithm": "PPO",
                "config": {"lr": 0.01, "gamma": 0.9},
                "stop": {"time_total_s": 600},
            }
        )
    )

    result = run("submit", "--file", str(path), "--config", '{"lr": 0.001}', "--run", "IMPALA")

    assert result.exit_code == 0, result.output
    (msg,) = queued(data_dir)
    body = json.loads(msg.body)
    assert body["request_id"] == "from-file" and body["algorithm"] == "IMPALA"
    assert body["config"] == {"lr": 0.001, "gamma": 0.9}


def test_submit_with_an_unreadable_file_is_a_usage_error(run, data_dir, tmp_path):
    result = run("submit", "--file", str(tmp_path / "missing.json"))

    assert result.exit_code == 2
    assert "--file" in result.output and "missing.json" in result.output


def test_build_request_without_flags_is_empty():
    assert build_request() == {}


# --- status / list / watch / cancel ------------------------------------------------------------


def seed_records(data_dir: Path) -> None:
    s = store(data_dir)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    s.insert_if_absent(
        RunRecord(
            request_id="r-run",
            state=RunState.running,
            request=request("r-run"),
            backend="twin",
            run_id="twin-1",
            progress=Progress(
                iteration=12,
                timesteps=48_000,
                time_total_s=95.0,
                episode_reward_mean=87.25,
                env_steps_per_s=505.0,
            ),
            created_at=now,
        )
    )
    s.insert_if_absent(
        RunRecord(
            request_id="r-failed",
            state=RunState.failed,
            request=request("r-failed"),
            backend="twin",
            run_id="twin-2",
            error="trainer exited with code 1: CUDA out of memory",
            stop_reason="error",
            created_at=now,
        )
    )
    done = CompletionMessage(
        message_id="r-done:completed",
        request_id="r-done",
        run_id="twin-3",
        status="Completed",
        stop_reason="reward_reached",
        final_reward=151.5,
        checkpoint_path="file:///ckpt/final",
    )
    s.insert_if_absent(
        RunRecord(
            request_id="r-done",
            state=RunState.notified,
            request=request("r-done"),
            backend="twin",
            run_id="twin-3",
            completion=done,
            created_at=now,
            deliveries=[
                Delivery(target="https://hooks.example.com/ok", ok=True, attempts=1, status_code=204),
                Delivery(
                    target="https://hooks.example.com/broken",
                    ok=False,
                    attempts=5,
                    status_code=503,
                    error="HTTP 503 after 5 attempts",
                ),
            ],
        )
    )
    s.insert_if_absent(
        RunRecord(
            request_id="r-canceled",
            state=RunState.canceled,
            request=request("r-canceled"),
            completion=CompletionMessage(
                message_id="r-canceled:completed", request_id="r-canceled", status="Canceled"
            ),
            created_at=now,
        )
    )


def test_status_shows_progress_error_completion_and_failed_deliveries(run, data_dir):
    seed_records(data_dir)

    running = run("status", "r-run")
    assert running.exit_code == 0
    assert "running" in running.output and "twin-1" in running.output
    assert "iteration 12" in running.output and "87.25" in running.output and "505" in running.output

    failed = run("status", "r-failed")
    assert "CUDA out of memory" in failed.output and "failed" in failed.output

    done = run("status", "r-done")
    assert '"final_reward": 151.5' in done.output and "file:///ckpt/final" in done.output
    assert "hooks.example.com/broken" in done.output and "HTTP 503 after 5 attempts" in done.output
    assert "1 notification(s) failed" in done.output

    as_json = run("status", "r-done", "--json")
    assert json.loads(as_json.stdout)["completion"]["final_reward"] == 151.5


def test_status_of_an_unknown_request_is_one_line_and_exit_1(run, data_dir):
    result = run("status", "nope")

    assert result.exit_code == 1
    assert "no training request 'nope'" in result.output
    assert "Traceback" not in result.output


def test_list_filters_by_state(run, data_dir):
    seed_records(data_dir)

    everything = run("list")
    assert all(rid in everything.output for rid in ("r-run", "r-failed", "r-done", "r-canceled"))

    only_running = run("list", "--state", "running")
    assert "r-run" in only_running.output and "r-failed" not in only_running.output

    lines = run("list", "--state", "failed", "--state", "notified", "--json").stdout.splitlines()
    assert sorted(json.loads(ln)["request_id"] for ln in lines) == ["r-done", "r-failed"]

    bad = run("list", "--state", "sleeping")
    assert bad.exit_code == 2 and "--state" in bad.output and "running" in bad.output


@pytest.mark.parametrize(("rid", "code"), [("r-done", 0), ("r-failed", 1), ("r-canceled", 3)])
def test_watch_exit_code_follows_the_outcome(run, data_dir, rid, code):
    seed_records(data_dir)

    result = run("watch", rid, "--interval-s", "0.1")

    assert result.exit_code == code
    assert rid in result.output


def test_watch_gives_up_after_its_timeout(run, data_dir):
    seed_records(data_dir)

    result = run("watch", "r-run", "--interval-s", "0.1", "--timeout-s", "0.3")

    assert result.exit_code == 1
    assert "still running" in result.output
    assert "iteration 12" in result.output  # the progress line was shown while waiting


def test_cancel_marks_the_run(run, data_dir):
    store(data_dir).insert_if_absent(RunRecord(request_id="r-new", request=request("r-new")))

    result = run("cancel", "r-new")

    assert result.exit_code == 0 and "cancel requested" in result.output
    assert store(data_dir).get("r-new").cancel_requested is True
    assert run("cancel", "missing").exit_code == 1


# --- dead letters ------------------------------------------------------------------------------


def dead_letter_one(data_dir: Path, body: bytes, message_id: str) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    with SqliteBroker(data_dir / "queue.sqlite3") as broker:
        broker.send(QUEUE_NAME, body, message_id=message_id)
        (msg,) = broker.receive(QUEUE_NAME)
        broker.dead_letter(
            msg, reason="InvalidRequest", description="env: 'Pong' is not an allowed environment"
        )
        return msg.sequence_number


def test_dead_letters_list_show_and_resubmit(run, data_dir):
    seq = dead_letter_one(data_dir, b'{"env": "Pong", "request_id": "dl-1"}', "dl-1")

    listed = run("dead-letters")
    assert listed.exit_code == 0
    assert "dl-1" in listed.output and "InvalidRequest" in listed.output
    assert "is not an allowed environment" in listed.output

    shown = run("dead-letters", "--show", str(seq))
    assert shown.exit_code == 0 and '"env": "Pong"' in shown.output

    resubmitted = run("dead-letters", "--resubmit", str(seq))
    assert resubmitted.exit_code == 0 and "dl-1:resubmit:1" in resubmitted.output
    (msg,) = queued(data_dir)
    assert msg.message_id == "dl-1:resubmit:1" and json.loads(msg.body)["env"] == "Pong"
    assert "no dead letters" in run("dead-letters").output

    missing = run("dead-letters", "--resubmit", str(seq))
    assert missing.exit_code == 1 and f"sequence number {seq}" in missing.output


# --- plot --------------------------------------------------------------------------------------


def test_plot_writes_the_reward_png_from_metrics(run, data_dir, tmp_path):
    store(data_dir).insert_if_absent(
        RunRecord(request_id="r-plot", state=RunState.running, request=request("r-plot"))
    )
    out_dir = data_dir / "runs" / "r-plot"
    out_dir.mkdir(parents=True)
    with open(out_dir / "metrics.jsonl", "w") as fh:
        fh.writelines(
            json.dumps(
                {
                    "iteration": i,
                    "timesteps": i * 1000,
                    "time_total_s": i * 2.0,
                    "episode_reward_mean": 20.0 * i,
                }
            )
            + "\n"
            for i in range(1, 6)
        )
    target = tmp_path / "curve.png"

    result = run("plot", "r-plot", "--out", str(target))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_iterations_is_exit_1(run, data_dir):
    store(data_dir).insert_if_absent(RunRecord(request_id="r-empty", request=request("r-empty")))

    result = run("plot", "r-empty")

    assert result.exit_code == 1 and "no training iterations" in result.output


# --- retrain -----------------------------------------------------------------------------------


def test_retrain_queues_a_warm_started_copy_with_flags_merged_over_the_parents(run, data_dir):
    seed_records(data_dir)

    result = run(
        "retrain",
        "r-done",
        "--stop",
        '{"training_iteration": 40}',
        "--config",
        '{"lr": 0.001}',
        "--request-id",
        "child-1",
        "--tag",
        "why=drift",
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "child-1"
    assert "warm-started from r-done" in result.output
    (msg,) = queued(data_dir)
    body = json.loads(msg.body)
    assert msg.message_id == "child-1" and body["restore_from"] == "rlq://r-done"
    assert (body["algorithm"], body["env"]) == ("IMPALA", "CartPole-v1")
    assert body["stop"]["episode_reward_mean"] == 150 and body["stop"]["training_iteration"] == 40
    assert body["config"] == {"lr": 0.001} and body["tags"] == {"why": "drift"}
    assert body["compute"]["backend"] == "twin"  # where the parent's checkpoint lives
    child = store(data_dir).get("child-1")
    assert child.parent_request_id == "r-done" and child.request.restore_from == "file:///ckpt/final"


@pytest.mark.parametrize(("rid", "why"), [("r-failed", "(Failed)"), ("r-canceled", "(Canceled)")])
def test_retrain_of_a_run_that_did_not_complete_is_refused_naming_restore_from(run, data_dir, rid, why):
    seed_records(data_dir)

    result = run("retrain", rid)

    assert result.exit_code == 2, result.output
    assert "restore_from" in result.output and "did not complete" in result.output and why in result.output
    assert queued(data_dir) == []


def test_retrain_of_an_unknown_run_is_exit_1(run, data_dir):
    result = run("retrain", "nobody")

    assert result.exit_code == 1 and "no training request 'nobody'" in result.output
    assert queued(data_dir) == []
