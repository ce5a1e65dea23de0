"""Real (short) RLlib training runs through the CLI: CartPole and Pong, restore, evaluate, cancel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from PIL import Image

METRIC_KEYS = {
    "iteration",
    "time_total_s",
    "timesteps",
    "episode_reward_mean",
    "episode_reward_min",
    "episode_reward_max",
    "episodes",
    "episodes_total",
    "env_steps_per_s",
}
SUMMARY_KEYS = {
    "final_reward",
    "best_reward",
    "iterations",
    "timesteps",
    "duration_s",
    "stop_reason",
    "checkpoint_path",
    "algorithm",
    "env",
}


def train(args, timeout=240):
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def stdout_json(stdout: str, prefix: str):
    return [json.loads(ln[len(prefix) + 1 :]) for ln in stdout.splitlines() if ln.startswith(prefix + " ")]


def uri_to_path(uri: str) -> Path:
    assert uri.startswith("file:///"), uri
    return Path(uri[len("file://") :])


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cartpole") / "o"
    p = train(
        [
            "--run",
            "IMPALA",
            "--env",
            "CartPole-v1",
            "--stop",
            '{"training_iteration": 3}',
            "--config",
            '{"num_workers": 1, "min_time_s_per_iteration": 1}',
            "--checkpoint-freq",
            "2",
            "--output-dir",
            str(out),
            "--seed",
            "1",
        ]
    )
    return out, p


def test_cartpole_outputs(cartpole_run):
    out, p = cartpole_run
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) >= METRIC_KEYS
        assert all(k.startswith("learner/") for k in set(r) - METRIC_KEYS)
    # The asynchronous Learner may not have reported by the first iteration; later ones have.
    assert any(isinstance(r.get("learner/total_loss"), float) for r in rows), rows
    assert 0 < rows[0]["timesteps"] <= rows[1]["timesteps"] <= rows[2]["timesteps"]
    assert rows[-1]["episodes_total"] > 0 and rows[-1]["episode_reward_mean"] > 0
    assert rows[-1]["env_steps_per_s"] > 0
    # stdout: one RLQ_METRICS line per iteration (same JSON), RLQ_SUMMARY last.
    assert stdout_json(p.stdout, "RLQ_METRICS") == rows
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("RLQ_SUMMARY ")
    summary = json.loads(last[len("RLQ_SUMMARY ") :])
    assert summary == json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["stop_reason"] == "iterations_limit"
    assert summary["iterations"] == 3 and summary["timesteps"] == rows[-1]["timesteps"]
    assert summary["algorithm"] == "IMPALA" and summary["env"] == "CartPole-v1"
    assert summary["final_reward"] == rows[-1]["episode_reward_mean"]
    assert summary["best_reward"] == max(
        r["episode_reward_mean"] for r in rows if r["episode_reward_mean"] is not None
    )
    assert "error" not in summary
    ckpt = uri_to_path(summary["checkpoint_path"])
    assert ckpt == out / "checkpoints" / "final"
    assert (ckpt / "learner_group" / "learner" / "rl_module" / "default_policy").is_dir()
    assert (out / "checkpoints" / "iter_000002").is_dir()


def test_restore_continues_counting_and_evaluates(cartpole_run, tmp_path):
    out, p = cartpole_run
    assert p.returncode == 0
    before = read_metrics(out)[-1]
    out2 = tmp_path / "o2"
    p2 = train(
        [
            "--run",
            "IMPALA",
            "--env",
            "CartPole-v1",
            "--stop",
            '{"training_iteration": 5}',
            "--config",
            '{"num_workers": 1, "min_time_s_per_iteration": 1}',
            "--restore",
            "file://" + str(out / "checkpoints" / "final"),
            "--output-dir",
            str(out2),
            "--evaluate-episodes",
            "2",
            "--evaluate-gif",
        ]
    )
    assert p2.returncode == 0, p2.stderr[-3000:]
    rows = read_metrics(out2)
    assert [r["iteration"] for r in rows] == [4, 5]
    assert rows[0]["timesteps"] > before["timesteps"]
    assert rows[0]["episodes_total"] > before["episodes_total"]
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["stop_reason"] == "iterations_limit" and summary["timesteps"] == rows[-1]["timesteps"]
    # plumbing only (any CartPole episode scores >= 8): the learned policy's evaluation is
    # test_impala_cartpole_learns_to_150's
    assert isinstance(summary["eval_reward"], float) and summary["eval_reward"] >= 8
    gif = uri_to_path(summary["replay_path"])
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames > 1


def test_evaluate_cli_with_gif(cartpole_run, tmp_path):
    out, p = cartpole_run
    assert p.returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    gif = tmp_path / "play.gif"
    res = evaluate_checkpoint(summary["checkpoint_path"], episodes=3, extra=("--gif", str(gif)))
    assert res["episodes"] == 3 and len(res["returns"]) == 3
    assert res["mean_return"] == pytest.approx(sum(res["returns"]) / 3)
    # the CLI's plumbing on a 3-iteration checkpoint (any CartPole episode scores >= 8); whether the
    # evaluated policy learned anything is test_impala_cartpole_learns_to_150's evaluation
    assert res["mean_return"] >= 8
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames > 1 and im.n_frames <= 300
        assert max(im.size) <= 200


def test_impala_cartpole_learns_to_150(tmp_path):
    """The must-have: the IMPALA preset reaches 150 well within 300 s on 2 cores."""
    out = tmp_path / "o"
    t0 = time.time()
    p = train(
        [
            "--run",
            "IMPALA",
            "--env",
            "CartPole-v1",
            "--stop",
            '{"episode_reward_mean": 150, "time_total_s": 200}',
            "--output-dir",
            str(out),
            "--checkpoint-freq",
            "0",
        ],
        timeout=290,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "reward_reached", summary
    assert summary["final_reward"] >= 150
    print(
        "IMPALA CartPole to 150:",
        summary["duration_s"],
        "s wall,",
        read_metrics(out)[-1]["time_total_s"],
        "s training",
    )
    assert time.time() - t0 < 280
    # The policy it learned plays well above chance: a random CartPole policy averages about 22, and
    # the greedy policy of a checkpoint that reached 150 in training must average at least 100.
    result = evaluate_checkpoint(summary["checkpoint_path"], episodes=5)
    print("greedy evaluation of the 150 checkpoint:", result["returns"])
    assert result["mean_return"] >= 100, result


def evaluate_checkpoint(checkpoint: str, *, episodes: int, extra: tuple[str, ...] = ()) -> dict:
    """``python -m trainer.evaluate`` on ``checkpoint``: its RLQ_EVAL result."""
    e = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.evaluate",
            "--checkpoint",
            checkpoint,
            "--episodes",
            str(episodes),
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert e.returncode == 0, e.stderr[-3000:]
    assert f"mean return over {episodes} episodes" in e.stdout
    return json.loads(e.stdout.strip().splitlines()[-1][len("RLQ_EVAL ") :])


def test_sigterm_cancels_with_summary(tmp_path):
    out = tmp_path / "o"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--run",
            "PPO",
            "--env",
            "CartPole-v1",
            "--stop",
            '{"time_total_s": 200}',
            "--output-dir",
            str(out),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("RLQ_METRICS") and len([x for x in lines if x.startswith("RLQ_METRICS")]) >= 3:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    last = (lines + rest.splitlines(keepends=True))[-1]
    assert last.startswith("RLQ_SUMMARY ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "canceled"
    assert summary["checkpoint_path"].endswith("/checkpoints/final")
    assert uri_to_path(summary["checkpoint_path"]).is_dir()


def test_pong_with_atari_preprocessing(tmp_path):
    out = tmp_path / "o"
    p = train(
        [
            "--run",
            "IMPALA",
            "--env",
            "PongNoFrameskip-v4",
            "--stop",
            '{"training_iteration": 2}',
            "--config",
            json.dumps(
                {
                    "num_workers": 1,
                    "num_envs_per_env_runner": 2,
                    "sample_batch_size": 20,
                    "train_batch_size": 40,
                    "min_time_s_per_iteration": 1,
                    "num_data_loader_buffers": 2,
                    "model": {"dim": 42},
                }
            ),
            "--output-dir",
            str(out),
            "--evaluate-episodes",
            "1",
        ],
        timeout=240,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "num_data_loader_buffers=2 ignored" in p.stderr
    # The preset's 128-step minibatches, refitted to the request's 20-step fragments.
    assert "minibatch_size=128 (preset) -> 20: 4 minibatches per 40-step batch" in p.stderr
    assert "sample_batch_size=20 -> rollout_fragment_length=20" in p.stderr
    # Where the start-up seconds went, logged once with the first metrics row.
    startup = [ln for ln in p.stderr.splitlines() if ln.startswith("rlq-trainer: start-up: ")]
    assert len(startup) == 1
    phases = dict(kv.rsplit(" ", 1) for kv in startup[0][len("rlq-trainer: start-up: ") :].split(", "))
    assert list(phases) == [
        "before_ray_init_s",
        "ray_init_s",
        "imports_s",
        "algorithm_build_s",
        "first_iteration_s",
        "first_metrics_s",
    ]
    assert float(phases["first_metrics_s"]) >= float(phases["ray_init_s"]) + float(
        phases["imports_s"]
    ) + float(phases["algorithm_build_s"])
    rows = read_metrics(out)
    assert len(rows) == 2 and rows[-1]["timesteps"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "iterations_limit"
    meta = json.loads((uri_to_path(summary["checkpoint_path"]) / "rlq_meta.json").read_text())
    assert meta["env_config"]["dim"] == 42 and meta["env_config"]["framestack"] == 4
    assert -21 <= summary["eval_reward"] <= 21


def _cmdline(process) -> str:
    """A child's command line, or "" for one that exited since it was listed (Ray starts and
    ends short-lived workers while a run goes on)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def test_a_killed_env_runner_is_replaced_without_ending_the_run(tmp_path):
    """SIGKILL one of two EnvRunner processes mid-training: RLlib's fault tolerance
    (``trainer/configure.py``) carries on with the other and the run meets its stop criterion."""
    import psutil

    out = tmp_path / "o"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    argv = ["--run", "PPO", "--env", "CartPole-v1", "--stop", '{"training_iteration": 6}']
    # an iteration of at least a second: the kill lands mid-run whatever the preset's speed
    config = '{"num_env_runners": 2, "train_batch_size": 1000, "min_time_s_per_iteration": 1}'
    argv += ["--config", config, "--output-dir", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        runners = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EnvRunner" in _cmdline(p)]
        assert len(runners) == 2, [p.cmdline() for p in runners]
        runners[0].kill()
        _stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "summary.json").read_text())["stop_reason"] == "iterations_limit"
