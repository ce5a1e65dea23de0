"""The model comparison a run ends with (``--model-eval-episodes``, ``--champion``): candidate and
champion on the same greedy episodes, deterministic for a fixed checkpoint and seeds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from trainer import evaluate

EPISODES = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One short CartPole run that compares its checkpoint with a champion that is not there."""
    out = tmp_path_factory.mktemp("model-eval") / "o"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    argv = ["--run", "IMPALA", "--env", "CartPole-v1", "--stop", '{"training_iteration": 2}']
    argv += ["--output-dir", str(out), "--model-eval-episodes", str(EPISODES)]
    argv += ["--champion", str(out / "no-such-champion"), "--champion-version", "3"]
    p = subprocess.run(
        [sys.executable, "-m", "trainer.train", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return Path(summary["checkpoint_path"].removeprefix("file://")), summary


def test_the_summary_holds_the_candidate_and_says_why_the_champion_is_missing(trained) -> None:
    _, summary = trained
    result = summary["model_eval"]
    seeds = [evaluate.MODEL_EVAL_SEED + i for i in range(EPISODES)]
    assert result["candidate"]["episodes"] == EPISODES and result["candidate"]["seeds"] == seeds
    assert result["champion"] is None and result["champion_version"] == 3
    assert result["error"].startswith("the champion could not be evaluated")


def test_the_comparison_is_deterministic_for_a_fixed_checkpoint_and_seeds(trained) -> None:
    checkpoint, summary = trained
    first = evaluate.compare(checkpoint, EPISODES, champion=checkpoint, champion_version=1)
    again = evaluate.compare(checkpoint, EPISODES, champion=checkpoint, champion_version=1)
    assert first == again
    # the trainer's own evaluation (another process) played the same episodes
    assert first["candidate"] == summary["model_eval"]["candidate"]
    # the champion is played on the candidate's episodes: the same policy scores the same
    assert first["champion"] == first["candidate"] and first["error"] is None
