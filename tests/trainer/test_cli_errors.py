"""Bad input: exit 2, one message naming the field, no traceback, before Ray starts."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT


def run_trainer(args, env=None, timeout=60):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO_ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--run", "DQNX", "--env", "CartPole-v1"], '--run: "DQNX"'),
        (["--env", "NoSuchGame-v9"], '--env: "NoSuchGame-v9"'),
        (["--env", "CartPole-v1", "--config", "{not json"], "--config:"),
        (["--env", "CartPole-v1", "--config", "[1, 2]"], "--config: [1, 2]"),
        (
            ["--env", "CartPole-v1", "--config", '{"num_workers": -3}'],
            "--config.num_workers: -3 is not allowed; expected an integer between 0 and 1024",
        ),
        (["--env", "CartPole-v1", "--config", '{"num_workers": 100000}'], "--config.num_workers: 100000"),
        (["--env", "CartPole-v1", "--config", '{"num_workers": "many"}'], '--config.num_workers: "many"'),
        (["--env", "CartPole-v1", "--config", '{"whatever": 1}'], "--config.whatever: 1"),
        (["--env", "CartPole-v1", "--stop", '{"reward": 1}'], "--stop.reward: 1"),
        (["--env", "CartPole-v1", "--stop", '{"time_total_s": -5}'], "--stop.time_total_s: -5"),
        (["--env", "CartPole-v1", "--checkpoint-freq", "x"], '--checkpoint-freq: "x"'),
        (["--env", "CartPole-v1", "--restore", "/nonexistent/ckpt"], '--restore: "/nonexistent/ckpt"'),
        (["--env", "CartPole-v1", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        # env_config: the environment is built once before Ray starts; its own message is the reason
        (
            ["--env", "CartPole-v1", "--env-config", '{"foo": 1}'],
            "--env-config: TypeError: CartPoleEnv.__init__() got an unexpected keyword argument 'foo'",
        ),
        (
            ["--env", "CartPole-v1", "--env-config", "[1]"],
            "--env-config: [1] is not allowed; expected a JSON object",
        ),
        (
            ["--env", "acme/Warehouse-v1", "--env-module", "nosuchmod"],
            "--env-module: nosuchmod cannot be imported",
        ),
        (
            ["--env", "acme/Warehouse-v1", "--env-module", "json"],
            "--env: json registers no environment 'acme/Warehouse-v1'; it registers none",
        ),
    ],
)
def test_bad_input_exits_2_with_one_message(args, needle, tmp_path):
    t0 = time.time()
    p = run_trainer([*args, "--output-dir", str(tmp_path / "o")])
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("rlq-trainer: error: ")
    assert needle in lines[0]
    assert "Started a local Ray instance" not in p.stderr + p.stdout  # validated before Ray
    assert time.time() - t0 < 30


def test_argv_from_env_reads_json_list():
    p = run_trainer(
        ["--argv-from-env", "RLQ_TRAINER_ARGV"],
        env={
            "RLQ_TRAINER_ARGV": json.dumps(
                ["--run", "IMPALA", "--env", "CartPole-v1", "--config", '{"num_workers": -1}']
            )
        },
    )
    assert p.returncode == 2
    assert "--config.num_workers: -1" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    "value, needle",
    [
        ("not json", "$RLQ_TRAINER_ARGV"),
        ('{"run": "x"}', "a JSON list of strings"),
        ('["--run", 3]', "a JSON list of strings"),
    ],
)
def test_argv_from_env_bad_values(value, needle):
    p = run_trainer(["--argv-from-env", "RLQ_TRAINER_ARGV"], env={"RLQ_TRAINER_ARGV": value})
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


def test_argv_from_env_missing_variable():
    e = {k: v for k, v in os.environ.items() if k != "RLQ_NOT_SET"}
    p = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--argv-from-env", "RLQ_NOT_SET"],
        cwd=REPO_ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and '--argv-from-env: "RLQ_NOT_SET"' in p.stderr


def test_script_form_works_from_another_directory(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO_ROOT / "trainer" / "train.py"), "--run", "NOPE"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and '--run: "NOPE"' in p.stderr and "Traceback" not in p.stderr


def test_evaluate_bad_checkpoint(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--checkpoint", str(tmp_path), "--episodes", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "--checkpoint" in p.stderr and "Traceback" not in p.stderr
